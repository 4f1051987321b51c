//! `shoal.cron` schedules: parse anything, and ask a parsed schedule for its next run after
//! any instant chrono can hold. Neither may panic.
#![no_main]
use libfuzzer_sys::fuzz_target;
use shoal_api::cron::Schedule;

fuzz_target!(|data: &[u8]| {
    let (when, text) = data.split_at(data.len().min(8));
    let Ok(text) = std::str::from_utf8(text) else {
        return;
    };
    if let Ok(s) = Schedule::parse(text) {
        let mut secs = [0u8; 8];
        secs[..when.len()].copy_from_slice(when);
        let t = chrono::DateTime::from_timestamp(i64::from_le_bytes(secs), 0)
            .unwrap_or(chrono::DateTime::<chrono::Utc>::MAX_UTC);
        let _ = s.next_after(t);
    }
});
