//! Durations and other scalars users write: `@every` intervals, CIDRs, timestamps, roles, and
//! the user's durations added to a time (restart delays, update monitors).
#![no_main]
use libfuzzer_sys::fuzz_target;
use shoal_api::dispatch::ipnet_str::Ipv4Cidr;

fuzz_target!(|data: &[u8]| {
    if data.len() >= 8 {
        let ns = i64::from_le_bytes(data[..8].try_into().unwrap_or([0; 8]));
        let base = chrono::DateTime::<chrono::Utc>::MAX_UTC;
        let _ = shoal_api::id::later(base, chrono::Duration::nanoseconds(ns));
    }
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(shoal_api::cron::Schedule::Every(d)) =
        shoal_api::cron::Schedule::parse(&format!("@every {s}"))
    {
        assert!(d <= shoal_api::cron::MAX_EVERY);
    }
    if let Ok(c) = s.parse::<Ipv4Cidr>() {
        let _ = (c.size(), c.nth(u32::MAX), c.to_string());
    }
    let _ = shoal_api::id::parse_time(s);
    let _ = s.parse::<shoal_api::Role>();
});
