//! Writes Cassandra answered for but could not take yet: too few replicas alive
//! (`Unavailable`), an overloaded or bootstrapping coordinator, a timeout. They wait here,
//! per topic (one partition each) with a backoff of their own, outside the staging area and
//! without an in-flight slot: a partition whose replicas are down holds up no other one.
//! A write that waits longer than `write_give_up_after` is failed.
//!
//! In disk mode each waiting write also gets a held copy in the spool (`keep_on_disk`), so
//! that a crash while a partition is down loses nothing; the copy goes when the write is done.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::time::Duration;

use tokio::time::Instant;

use crate::error::StoreError;
use crate::write::{Op, Pending, Ticket};

/// The writes waiting for a retry, by topic.
#[derive(Default)]
pub(crate) struct Waiting {
    topics: HashMap<String, TopicWait>,
    len: usize,
    /// Writes that are only in memory (`Pending::only_in_memory`), over every topic.
    only_in_memory: usize,
}

struct TopicWait {
    /// Each write with the moment it first waited, oldest batch first.
    writes: VecDeque<(Instant, Pending)>,
    retry_at: Instant,
    backoff: Duration,
    /// A retry batch of this topic is being sent: no second one until it is answered.
    sending: bool,
    /// Why the topic's last attempt could not be written, for a write given up.
    last_reason: String,
    /// Its writes that are only in memory.
    only_in_memory: usize,
}

impl TopicWait {
    /// `Waiting::keep_on_disk` for one topic; `false` when `keep` had no room.
    fn keep_on_disk(
        &mut self,
        keep: &mut impl FnMut(&Op) -> io::Result<Option<Ticket>>,
    ) -> io::Result<bool> {
        let back = self.writes.iter().rev();
        let from_back = back.take_while(|(_, p)| p.only_in_memory()).count();
        let n = self.writes.len();
        let order = (n - from_back..n).rev().chain(0..n - from_back);
        for i in order {
            if self.only_in_memory == 0 {
                break;
            }
            let p = &mut self.writes[i].1;
            if !p.only_in_memory() {
                continue;
            }
            let Some(ticket) = keep(&p.op)? else {
                return Ok(false);
            };
            p.ticket = Some(ticket);
            self.only_in_memory -= 1;
        }
        Ok(true)
    }
}

/// Why a batch goes back to wait.
pub(crate) enum Refusal {
    /// Cassandra could not take it (the reason, for health and for a write given up): the
    /// topic is tried again after its backoff.
    Transient { reason: String },
    /// The connection went away: tried again as soon as the writer runs (it waits for the
    /// connection itself).
    Disconnected,
}

/// How long a topic waits between retries: from `min`, doubling while they fail, up to `max`.
#[derive(Clone, Copy)]
pub(crate) struct Backoff {
    pub(crate) min: Duration,
    pub(crate) max: Duration,
}

impl Waiting {
    /// Writes waiting, over every topic (the writer keeps the `waiting` gauge instead).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Topics waiting (some of their writes may be out on a retry).
    pub(crate) fn topic_count(&self) -> usize {
        self.topics.len()
    }

    pub(crate) fn holds(&self, topic: &str) -> bool {
        self.topics.contains_key(topic)
    }

    /// Waiting writes a crash would lose (no copy in the spool).
    pub(crate) fn only_in_memory(&self) -> usize {
        self.only_in_memory
    }

    /// Gives each waiting write that is only in memory the ticket of a held copy made by
    /// `keep` (the spool's `append_held`), until all have one or `keep` answers `None` (no
    /// room). Returns how many got one. New writes join a topic at the back and retried ones
    /// come back at the front, so each topic is looked at from its back, then its front,
    /// and only until its count is reached.
    pub(crate) fn keep_on_disk(
        &mut self,
        mut keep: impl FnMut(&Op) -> io::Result<Option<Ticket>>,
    ) -> io::Result<u64> {
        let mut kept = 0;
        for wait in self.topics.values_mut().filter(|w| w.only_in_memory > 0) {
            let before = wait.only_in_memory;
            let room = wait.keep_on_disk(&mut keep);
            let n = (before - wait.only_in_memory) as u64;
            self.only_in_memory -= before - wait.only_in_memory;
            kept += n;
            if !room? {
                break;
            }
        }
        Ok(kept)
    }

    /// Writes that arrive for a waiting topic go behind it: they would be refused too, and
    /// their topic's order stays.
    pub(crate) fn append(&mut self, batch: Vec<Pending>, now: Instant) {
        let Some(topic) = batch.first().map(|p| p.op.topic().to_owned()) else {
            return;
        };
        let Some(wait) = self.topics.get_mut(&topic) else {
            return;
        };
        self.len += batch.len();
        let loose = batch.iter().filter(|p| p.only_in_memory()).count();
        wait.only_in_memory += loose;
        self.only_in_memory += loose;
        wait.writes.extend(batch.into_iter().map(|p| (now, p)));
    }

    /// A batch that could not be written goes back to the front of its topic's queue, with
    /// the moment it first waited (`since`: a retry batch keeps the latest of its writes',
    /// so a write may wait a little longer than the limit, never less; `None`: now).
    pub(crate) fn put_back(
        &mut self,
        batch: Vec<Pending>,
        since: Option<Instant>,
        refusal: Refusal,
        backoff: Backoff,
        now: Instant,
    ) {
        let Some(topic) = batch.first().map(|p| p.op.topic().to_owned()) else {
            return;
        };
        let why = match &refusal {
            Refusal::Transient { reason } => reason.clone(),
            Refusal::Disconnected => "not connected".to_owned(),
        };
        let wait = self.topics.entry(topic).or_insert_with(|| TopicWait {
            writes: VecDeque::new(),
            retry_at: now,
            backoff: Duration::ZERO,
            sending: false,
            last_reason: why.clone(),
            only_in_memory: 0,
        });
        match refusal {
            Refusal::Transient { .. } => {
                wait.backoff = (wait.backoff * 2).clamp(backoff.min, backoff.max);
                wait.retry_at = now + wait.backoff;
                wait.last_reason = why;
            }
            Refusal::Disconnected => wait.retry_at = now,
        }
        self.len += batch.len();
        let loose = batch.iter().filter(|p| p.only_in_memory()).count();
        wait.only_in_memory += loose;
        self.only_in_memory += loose;
        let since = since.unwrap_or(now);
        for p in batch.into_iter().rev() {
            wait.writes.push_front((since, p));
        }
    }

    /// A write of `topic` landed: its partition takes writes again, so the rest is tried at
    /// once with the backoff reset. A topic with nothing left stops waiting.
    pub(crate) fn landed(&mut self, topic: &str, now: Instant) {
        if let Some(wait) = self.topics.get_mut(topic) {
            wait.backoff = Duration::ZERO;
            wait.retry_at = now;
        }
        self.forget_if_done(topic);
    }

    /// The retry batch of `topic` has been answered (whatever the outcome).
    pub(crate) fn retry_done(&mut self, topic: &str) {
        if let Some(wait) = self.topics.get_mut(topic) {
            wait.sending = false;
        }
        self.forget_if_done(topic);
    }

    fn forget_if_done(&mut self, topic: &str) {
        if self
            .topics
            .get(topic)
            .is_some_and(|w| w.writes.is_empty() && !w.sending)
        {
            self.topics.remove(topic);
        }
    }

    /// Takes out every write that first waited longer than `give_up` ago, with the error to
    /// fail it with.
    pub(crate) fn expired(
        &mut self,
        now: Instant,
        give_up: Duration,
    ) -> Vec<(Pending, StoreError)> {
        let mut out = Vec::new();
        for wait in self.topics.values_mut() {
            if !wait
                .writes
                .iter()
                .any(|(since, _)| now.duration_since(*since) >= give_up)
            {
                continue;
            }
            let (old, keep): (VecDeque<_>, VecDeque<_>) = wait
                .writes
                .drain(..)
                .partition(|(since, _)| now.duration_since(*since) >= give_up);
            wait.writes = keep;
            let loose = old.iter().filter(|(_, p)| p.only_in_memory()).count();
            wait.only_in_memory -= loose;
            self.only_in_memory -= loose;
            let error = StoreError::Db(format!(
                "write given up after waiting longer than write_give_up_after ({give_up:?}): {}",
                wait.last_reason
            ));
            out.extend(old.into_iter().map(|(_, p)| (p, error.clone())));
        }
        self.len -= out.len();
        let done: Vec<String> = self
            .topics
            .iter()
            .filter(|(_, w)| w.writes.is_empty() && !w.sending)
            .map(|(t, _)| t.clone())
            .collect();
        for t in done {
            self.forget_if_done(&t);
        }
        out
    }

    /// The next batch of a topic whose retry time has come (and that is not being sent):
    /// its head write plus the following writes of the same kind, at most `max_rows` and
    /// `max_bytes` (a larger first write goes alone). Returns the writes and the latest
    /// moment one of them first waited; the topic counts as sending until `retry_done`.
    pub(crate) fn take_due(
        &mut self,
        now: Instant,
        max_rows: usize,
        max_bytes: usize,
    ) -> Option<(Vec<Pending>, Instant)> {
        let wait = self
            .topics
            .values_mut()
            .filter(|w| !w.sending && w.retry_at <= now && !w.writes.is_empty())
            .min_by_key(|w| w.retry_at)?;
        let insert = wait.writes.front()?.1.op.is_insert();
        let (mut batch, mut since, mut bytes) = (Vec::new(), None::<Instant>, 0);
        while let Some((_, p)) = wait.writes.front() {
            let size = p.op.encoded_size();
            if p.op.is_insert() != insert
                || batch.len() >= max_rows
                || (!batch.is_empty() && bytes + size > max_bytes)
            {
                break;
            }
            bytes += size;
            let (at, p) = wait.writes.pop_front()?;
            if p.only_in_memory() {
                wait.only_in_memory -= 1;
                self.only_in_memory -= 1;
            }
            batch.push(p);
            since = since.max(Some(at));
        }
        wait.sending = true;
        self.len -= batch.len();
        Some((batch, since.unwrap_or(now)))
    }

    /// When the earliest topic that is not being sent is due.
    pub(crate) fn next_due(&self) -> Option<Instant> {
        self.topics
            .values()
            .filter(|w| !w.sending && !w.writes.is_empty())
            .map(|w| w.retry_at)
            .min()
    }

    /// The write that has waited longest (for `drop_oldest` on a full buffer).
    pub(crate) fn evict_oldest(&mut self) -> Option<Pending> {
        let topic = self
            .topics
            .iter()
            .filter_map(|(t, w)| w.writes.front().map(|(at, _)| (*at, t)))
            .min()?
            .1
            .clone();
        let wait = self.topics.get_mut(&topic)?;
        let (_, p) = wait.writes.pop_front()?;
        if p.only_in_memory() {
            wait.only_in_memory -= 1;
            self.only_in_memory -= 1;
        }
        self.len -= 1;
        self.forget_if_done(&topic);
        Some(p)
    }

    /// Takes out up to `n` of the newest waiting writes, from the topics with the most
    /// first, each handed to `store` (the spool) before it goes: `Ok(false)` (no room) puts
    /// it back and ends the move. Writes someone awaits stay (and the writes before them).
    /// Returns the writes stored; their retries were theirs, and a topic left empty stops
    /// waiting.
    pub(crate) fn move_newest(
        &mut self,
        n: usize,
        mut store: impl FnMut(&Pending) -> io::Result<bool>,
    ) -> io::Result<Vec<Pending>> {
        let mut by_size: Vec<(usize, String)> = self
            .topics
            .iter()
            .map(|(t, w)| (w.writes.len(), t.clone()))
            .collect();
        by_size.sort_unstable_by(|a, b| b.cmp(a));
        let mut moved = Vec::new();
        'topics: for (_, topic) in by_size {
            let Some(wait) = self.topics.get_mut(&topic) else {
                continue;
            };
            while moved.len() < n {
                let Some((_, p)) = wait.writes.back() else {
                    break;
                };
                if p.done.is_some() {
                    break;
                }
                if !store(p)? {
                    break 'topics;
                }
                let (_, p) = wait.writes.pop_back().expect("looked at");
                if p.only_in_memory() {
                    wait.only_in_memory -= 1;
                    self.only_in_memory -= 1;
                }
                self.len -= 1;
                moved.push(p);
            }
            self.forget_if_done(&topic);
            if moved.len() >= n {
                break;
            }
        }
        Ok(moved)
    }

    /// Every waiting write, for shutdown or a handover.
    pub(crate) fn drain(&mut self) -> Vec<Pending> {
        let out: Vec<Pending> = self
            .topics
            .drain()
            .flat_map(|(_, w)| w.writes.into_iter().map(|(_, p)| p))
            .collect();
        self.len = 0;
        self.only_in_memory = 0;
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::msgid::MsgId;
    use crate::types::Message;
    use crate::write::{Charge, Op};

    const BACKOFF: Backoff = Backoff {
        min: Duration::from_millis(100),
        max: Duration::from_millis(400),
    };

    fn write(topic: &str, us: u64) -> Pending {
        Pending {
            op: Op::Insert(Message {
                topic: topic.into(),
                msgid: MsgId::new(us, 1, 0),
                sender: "c".into(),
                qos: 1,
                retain: false,
                payload: b"p".to_vec(),
                arrived_ms: 0,
                ttl_secs: None,
            }),
            done: None,
            charge: Charge::default(),
            ticket: None,
        }
    }

    fn unavailable() -> Refusal {
        Refusal::Transient {
            reason: "Unavailable: 1 replica alive, QUORUM needs 2".into(),
        }
    }

    fn ids(batch: &[Pending]) -> Vec<u64> {
        batch.iter().map(|p| us(&p.op)).collect()
    }

    fn us(op: &Op) -> u64 {
        match op {
            Op::Insert(m) => m.msgid.timestamp_us(),
            Op::Delete { msgid, .. } => msgid.timestamp_us(),
        }
    }

    #[test]
    fn a_waiting_topic_is_retried_after_its_backoff_and_others_are_not_held() {
        let t0 = Instant::now();
        let mut w = Waiting::default();
        w.put_back(
            vec![write("down", 1), write("down", 2)],
            None,
            unavailable(),
            BACKOFF,
            t0,
        );
        assert!(w.holds("down") && !w.holds("up"));
        assert_eq!((w.len(), w.topic_count()), (2, 1));
        // Not due yet: nothing to send, and the writer knows when to look again.
        assert!(w.take_due(t0, 32, usize::MAX).is_none());
        assert_eq!(w.next_due(), Some(t0 + BACKOFF.min));
        // Later writes of the topic go behind it, in order.
        w.append(vec![write("down", 3)], t0);
        let t1 = t0 + BACKOFF.min;
        let (batch, since) = w.take_due(t1, 32, usize::MAX).unwrap();
        assert_eq!((ids(&batch), since), (vec![1, 2, 3], t0));
        // One retry at a time per topic.
        assert!(w.take_due(t1, 32, usize::MAX).is_none());
        assert_eq!(w.next_due(), None);
        // Refused again: the backoff doubles, up to its max.
        w.put_back(batch, Some(since), unavailable(), BACKOFF, t1);
        w.retry_done("down");
        assert_eq!(w.next_due(), Some(t1 + 2 * BACKOFF.min));
        let (batch, _) = w.take_due(t1 + 2 * BACKOFF.min, 32, usize::MAX).unwrap();
        let t2 = t1 + 2 * BACKOFF.min;
        w.put_back(batch, Some(t0), unavailable(), BACKOFF, t2);
        w.retry_done("down");
        let (batch, _) = w.take_due(t2 + BACKOFF.max, 32, usize::MAX).unwrap();
        let t3 = t2 + BACKOFF.max;
        w.put_back(batch, Some(t0), unavailable(), BACKOFF, t3);
        w.retry_done("down");
        assert_eq!(w.next_due(), Some(t3 + BACKOFF.max), "capped");
        // It lands: the rest goes at once, and an empty topic stops waiting.
        let (batch, _) = w.take_due(t3 + BACKOFF.max, 2, usize::MAX).unwrap();
        assert_eq!(ids(&batch), [1, 2]);
        w.landed("down", t3 + BACKOFF.max);
        w.retry_done("down");
        let (batch, _) = w.take_due(t3 + BACKOFF.max, 2, usize::MAX).unwrap();
        assert_eq!(ids(&batch), [3]);
        w.landed("down", t3 + BACKOFF.max);
        w.retry_done("down");
        assert!(!w.holds("down"));
        assert_eq!((w.len(), w.topic_count()), (0, 0));
    }

    /// The µs of the writes `keep_on_disk` copied.
    type Seen = std::rc::Rc<std::cell::RefCell<Vec<u64>>>;

    /// A keeper with room for `room` copies (each ticket on a counter of its own).
    fn keeper(room: usize) -> (impl FnMut(&Op) -> io::Result<Option<Ticket>>, Seen) {
        let seen = Seen::default();
        let log = seen.clone();
        let keep = move |op: &Op| {
            if log.borrow().len() >= room {
                return Ok(None);
            }
            log.borrow_mut().push(us(op));
            Ok(Some(Ticket(Default::default())))
        };
        (keep, seen)
    }

    #[test]
    fn waiting_writes_get_a_held_copy_once_wherever_they_joined() {
        let t0 = Instant::now();
        let mut w = Waiting::default();
        w.put_back(
            vec![write("a", 1), write("a", 2)],
            None,
            unavailable(),
            BACKOFF,
            t0,
        );
        w.append(vec![write("a", 3)], t0);
        assert_eq!(w.only_in_memory(), 3);
        // No room after two: the third stays only in memory, and is kept by the next call.
        let (keep, seen) = keeper(2);
        assert_eq!(w.keep_on_disk(keep).unwrap(), 2);
        assert_eq!((w.only_in_memory(), seen.borrow().clone()), (1, vec![3, 2]));
        let (keep, seen) = keeper(10);
        assert_eq!(w.keep_on_disk(keep).unwrap(), 1);
        assert_eq!(*seen.borrow(), [1]);
        // A retry batch out and back, and a new write behind: only the new one is copied.
        let (batch, since) = w.take_due(t0 + BACKOFF.min, 2, usize::MAX).unwrap();
        assert_eq!(w.only_in_memory(), 0);
        w.put_back(batch, Some(since), unavailable(), BACKOFF, t0 + BACKOFF.min);
        w.retry_done("a");
        w.append(vec![write("a", 4)], t0);
        let (keep, seen) = keeper(10);
        assert_eq!(w.keep_on_disk(keep).unwrap(), 1);
        assert_eq!(*seen.borrow(), [4]);
        // Leaving by any door keeps the count: given up, evicted, drained.
        w.put_back(vec![write("b", 5)], None, unavailable(), BACKOFF, t0);
        w.append(vec![write("b", 6)], t0);
        assert_eq!(w.only_in_memory(), 2);
        assert_eq!(w.evict_oldest().map(|p| p.ticket.is_some()), Some(true));
        let later = t0 + Duration::from_secs(1);
        w.put_back(vec![write("c", 7)], None, unavailable(), BACKOFF, later);
        assert_eq!(w.expired(later, Duration::from_millis(500)).len(), 5);
        assert_eq!(w.only_in_memory(), 1);
        assert_eq!(w.drain().len(), 1);
        assert_eq!(w.only_in_memory(), 0);
    }

    #[test]
    fn the_newest_writes_of_the_longest_queues_move_out_until_the_store_is_full() {
        let t0 = Instant::now();
        let mut w = Waiting::default();
        w.put_back(
            (1..=5).map(|i| write("big", i)).collect(),
            None,
            unavailable(),
            BACKOFF,
            t0,
        );
        w.put_back(vec![write("small", 10)], None, unavailable(), BACKOFF, t0);
        let mut awaited = write("small", 11);
        awaited.done = Some(tokio::sync::oneshot::channel().0);
        w.append(vec![awaited, write("small", 12)], t0);
        let moved = w.move_newest(3, |_| Ok(true)).unwrap();
        assert_eq!(ids(&moved), [5, 4, 3]);
        assert_eq!(
            (w.len(), w.only_in_memory()),
            (5, 4),
            "the awaited one is not counted"
        );
        // An awaited write stays, and so do the writes before it.
        let moved = w.move_newest(10, |_| Ok(true)).unwrap();
        assert_eq!(ids(&moved), [12, 2, 1], "the longer queue first");
        assert!(!w.holds("big"), "a topic left empty stops waiting");
        assert_eq!(w.len(), 2);
        // No room: the write stays where it was.
        let mut w = Waiting::default();
        w.put_back(
            vec![write("t", 1), write("t", 2)],
            None,
            unavailable(),
            BACKOFF,
            t0,
        );
        let mut room = 1;
        let moved = w
            .move_newest(2, |_| {
                room -= 1;
                Ok(room >= 0)
            })
            .unwrap();
        assert_eq!((ids(&moved), w.len()), (vec![2], 1));
    }

    #[test]
    fn topics_wait_apart_and_the_due_one_goes_first() {
        let t0 = Instant::now();
        let mut w = Waiting::default();
        w.put_back(vec![write("a", 1)], None, unavailable(), BACKOFF, t0);
        let later = t0 + Duration::from_millis(50);
        w.put_back(vec![write("b", 2)], None, unavailable(), BACKOFF, later);
        let (batch, _) = w.take_due(t0 + BACKOFF.min, 32, usize::MAX).unwrap();
        assert_eq!(ids(&batch), [1], "b is not due yet");
        assert!(w.take_due(t0 + BACKOFF.min, 32, usize::MAX).is_none());
        let (batch, _) = w.take_due(later + BACKOFF.min, 32, usize::MAX).unwrap();
        assert_eq!(ids(&batch), [2]);
    }

    #[test]
    fn writes_older_than_the_limit_are_given_up_and_younger_ones_stay() {
        let t0 = Instant::now();
        let limit = Duration::from_secs(10);
        let mut w = Waiting::default();
        w.put_back(
            vec![write("t", 1), write("t", 2)],
            None,
            unavailable(),
            BACKOFF,
            t0,
        );
        w.append(vec![write("t", 3)], t0 + Duration::from_secs(5));
        assert!(w.expired(t0 + Duration::from_secs(9), limit).is_empty());
        let gone = w.expired(t0 + limit, limit);
        let gone_ids: Vec<u64> = gone
            .iter()
            .flat_map(|(p, _)| ids(std::slice::from_ref(p)))
            .collect();
        assert_eq!(gone_ids, [1, 2]);
        assert!(gone.iter().all(|(_, e)| {
            e.to_string()
                .contains("write_give_up_after (10s): Unavailable: 1 replica alive")
        }));
        assert_eq!(w.len(), 1);
        let gone = w.expired(t0 + Duration::from_secs(15), limit);
        assert_eq!(gone.len(), 1);
        assert!(!w.holds("t"), "nothing left to wait for");
    }

    #[test]
    fn a_retry_batch_is_capped_in_rows_and_bytes() {
        let t0 = Instant::now();
        let mut w = Waiting::default();
        let batch: Vec<Pending> = (1..=5).map(|i| write("t", i)).collect();
        let size = batch[0].op.encoded_size();
        w.put_back(batch, None, unavailable(), BACKOFF, t0);
        let due = t0 + BACKOFF.min;
        let (b, _) = w.take_due(due, 32, 2 * size).unwrap();
        assert_eq!(ids(&b), [1, 2]);
        w.put_back(b, Some(t0), Refusal::Disconnected, BACKOFF, due);
        w.retry_done("t");
        let (b, _) = w.take_due(due, 3, usize::MAX).unwrap();
        assert_eq!(
            ids(&b),
            [1, 2, 3],
            "a lost connection retries at once, in order"
        );
        assert_eq!(w.len(), 2);
        assert_eq!(w.drain().len(), 2);
    }

    #[test]
    fn drop_oldest_evicts_the_write_that_waited_longest() {
        let t0 = Instant::now();
        let mut w = Waiting::default();
        w.put_back(
            vec![write("new", 2)],
            None,
            unavailable(),
            BACKOFF,
            t0 + Duration::from_secs(1),
        );
        w.put_back(vec![write("old", 1)], None, unavailable(), BACKOFF, t0);
        let p = w.evict_oldest().unwrap();
        assert_eq!(ids(std::slice::from_ref(&p)), [1]);
        // A topic left with nothing stops waiting (or health would say degraded forever).
        assert_eq!((w.len(), w.topic_count()), (1, 1));
        assert!(!w.holds("old"));
    }
}
