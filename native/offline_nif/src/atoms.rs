//! Every atom the NIF reads or writes, in one place.

rustler::atoms! {
    ok, error, undefined, true_ = "true", false_ = "false",
    connecting, connected, disconnected, not_started,
    already_started, not_connected, timeout, overloaded, shutdown, panic,
    offline_cassandra,
    topic, msgid, sender, qos, retain, payload, arrived, ttl,
    accepted, written, failed, dropped, evicted, rejected, in_flight, buffered,
    batches, requests_split, cancelled, retries, fetches, fetch_failures, fetched_rows,
    floor_scans, floor_resets, sliced_reads,
    flushed, abandoned, handed_over, invalid_config, requeued,
    offline_cassandra_event, state_changed, writes_failed, writes_requeued, writes_waiting,
    degraded, waiting, waited, gave_up, refused_invalid, refused_protocol,
    write_latency_p50_us, write_latency_p99_us, read_latency_p50_us, read_latency_p99_us,
    buffer_capacity, purge, count,
    spooled, spool_bytes, spool_unsynced, spool_appended, spool_held, spool_recovered, spool_torn,
    spool_errors, left_in_spool, spool_max_bytes, spool_failed, none,
    expired, buffered_bytes, buffer_max_bytes,
    claim, refresh, release, held, held_by,
    written_us, guid, unreadable_rows, replay_reads, replay_reads_peak, replay_read_retries, clock_offset_ms, clock_skewed, clock_skews, clock_skew_limit_ms,
}
