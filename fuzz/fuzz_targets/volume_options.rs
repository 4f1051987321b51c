//! Shared-volume options (`shoal_api::volume`), as `docker volume create -d shoal --opt K=V` and
//! compose `driver_opts` send them: lines of `key=value` (the first byte picks the driver), then
//! the mount command of every volume that parses, which must carry no credential value.
#![no_main]
use libfuzzer_sys::fuzz_target;
use shoal_api::volume;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    let driver = match which % 3 {
        0 => Some("shoal"),
        1 => Some("local"),
        _ => None,
    };
    let options: HashMap<String, String> = text
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let _ = volume::is_managed(driver, &options);
    let Ok(cfg) = volume::parse(driver, &options) else {
        return;
    };
    let creds: HashMap<String, Vec<u8>> = volume::credential_keys(&options)
        .into_iter()
        .filter_map(|k| Some((k.clone(), options.get(&k)?.clone().into_bytes())))
        .collect();
    let Ok(files) = volume::files_to_write(&cfg, &creds) else {
        return;
    };
    let paths: HashMap<String, PathBuf> = files
        .iter()
        .map(|(k, _)| {
            (
                k.to_string(),
                PathBuf::from(format!("/run/shoal-files/.volumes/{k}")),
            )
        })
        .collect();
    // Credentials never shape the command line: the same volume with other credential values
    // (same keys) gives the same argv (a value may still occur in it by chance, inside a host
    // name the user gave, so comparing argvs is the check, not searching for the value).
    let other: HashMap<String, Vec<u8>> = creds
        .iter()
        .map(|(k, v)| {
            let mut w = v.clone();
            w.reverse();
            w.push(b'Z');
            (k.clone(), w)
        })
        .collect();
    let target = Path::new("/var/lib/shoal/volumes/v/0");
    let a = volume::mount_command(&cfg, target, &paths, &creds);
    let b = volume::mount_command(&cfg, target, &paths, &other);
    if let (Ok(Some(a)), Ok(Some(b))) = (a, b) {
        assert_eq!(a.args, b.args, "credentials changed the argv");
        assert_eq!(a.program, b.program);
    }
});
