//! Every query-string reader of the API (`shoal_manager::api::read_query`): booleans both ways
//! dockerd reads them, versions, `filters` JSON in both shapes, the events' and logs' `since`,
//! `until` and `tail`, and the events filter run over sample events. The bytes are the raw query
//! after `?`, as a client sends it (percent-escapes included).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(raw) = std::str::from_utf8(data) {
        let _ = shoal_manager::api::read_query(raw);
    }
});
