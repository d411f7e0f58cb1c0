//! A bounded map that forgets its least recently used entry when full: the writer's memory
//! of topics whose index rows it wrote. Forgetting one old topic at a time (instead of all
//! of them at a size limit) keeps a node from rewriting the index rows of every active
//! topic at once. Hand-written: one map and an index-linked list; no crate needed.

use std::collections::HashMap;

const NONE: usize = usize::MAX;

struct Node<V> {
    key: String,
    value: V,
    /// Neighbours towards the most (`newer`) and least (`older`) recently used.
    newer: usize,
    older: usize,
}

pub(crate) struct Lru<V> {
    capacity: usize,
    slots: HashMap<String, usize>,
    nodes: Vec<Node<V>>,
    newest: usize,
    oldest: usize,
}

impl<V> Lru<V> {
    pub(crate) fn new(capacity: usize) -> Lru<V> {
        Lru {
            capacity: capacity.max(1),
            slots: HashMap::new(),
            nodes: Vec::new(),
            newest: NONE,
            oldest: NONE,
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.slots.len()
    }

    /// The value of `key`, which becomes the most recently used.
    pub(crate) fn get(&mut self, key: &str) -> Option<&V> {
        let i = *self.slots.get(key)?;
        self.unlink(i);
        self.push_newest(i);
        Some(&self.nodes[i].value)
    }

    /// Sets `key` (the most recently used now); when full, the least recently used entry
    /// makes room.
    pub(crate) fn insert(&mut self, key: &str, value: V) {
        if let Some(&i) = self.slots.get(key) {
            self.nodes[i].value = value;
            self.unlink(i);
            self.push_newest(i);
            return;
        }
        let i = if self.slots.len() >= self.capacity {
            let i = self.oldest;
            self.unlink(i);
            self.slots.remove(&self.nodes[i].key);
            let node = &mut self.nodes[i];
            node.key.clear();
            node.key.push_str(key);
            node.value = value;
            i
        } else {
            self.nodes.push(Node {
                key: key.to_owned(),
                value,
                newer: NONE,
                older: NONE,
            });
            self.nodes.len() - 1
        };
        self.slots.insert(key.to_owned(), i);
        self.push_newest(i);
    }

    fn unlink(&mut self, i: usize) {
        let (newer, older) = (self.nodes[i].newer, self.nodes[i].older);
        match newer {
            NONE => self.newest = older,
            n => self.nodes[n].older = older,
        }
        match older {
            NONE => self.oldest = newer,
            o => self.nodes[o].newer = newer,
        }
    }

    fn push_newest(&mut self, i: usize) {
        self.nodes[i].newer = NONE;
        self.nodes[i].older = self.newest;
        match self.newest {
            NONE => self.oldest = i,
            n => self.nodes[n].newer = i,
        }
        self.newest = i;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_least_recently_used_goes_first() {
        let mut lru = Lru::new(3);
        lru.insert("a", 1);
        lru.insert("b", 2);
        lru.insert("c", 3);
        assert_eq!(lru.get("a"), Some(&1)); // b is the oldest now
        lru.insert("d", 4);
        assert_eq!(lru.get("b"), None);
        assert_eq!(lru.len(), 3);
        lru.insert("c", 30); // update: c is the newest, a the oldest
        lru.insert("e", 5);
        assert_eq!(lru.get("a"), None);
        assert_eq!(lru.get("c"), Some(&30));
        assert_eq!(lru.get("d"), Some(&4));
        assert_eq!(lru.get("e"), Some(&5));
    }

    /// Against a plain model over many operations: same answers, never above capacity.
    #[test]
    fn behaves_like_a_model() {
        let cap = 50;
        let mut lru = Lru::new(cap);
        let mut model: Vec<(String, u32)> = Vec::new(); // most recent last
        let mut seed = 7u64;
        for step in 0..20_000u32 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let key = format!("t{}", seed % 80);
            if seed.is_multiple_of(3) {
                let want = model.iter().position(|(k, _)| *k == key).map(|p| {
                    let e = model.remove(p);
                    model.push(e);
                    model.last().unwrap().1
                });
                assert_eq!(lru.get(&key).copied(), want, "step {step}");
            } else {
                model.retain(|(k, _)| *k != key);
                if model.len() >= cap {
                    model.remove(0);
                }
                model.push((key.clone(), step));
                lru.insert(&key, step);
            }
            assert_eq!(lru.len(), model.len());
        }
    }
}
