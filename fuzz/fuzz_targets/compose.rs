//! The dashboard's compose-file conversion (`shoal_dashboard::compose::plan`, issue 21): a pasted
//! file is user input that reaches YAML parsing, shell splitting, port, size, duration and CPU
//! parsing and the spec's JSON. The first byte picks one of a few stack names (valid and not),
//! the rest is the file.
#![no_main]
use libfuzzer_sys::fuzz_target;

const STACKS: [&str; 4] = ["demo", "a_b-c", "", "UPPER"];

fuzz_target!(|data: &[u8]| {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    if let Ok(yaml) = std::str::from_utf8(rest) {
        let _ = shoal_dashboard::compose::plan(STACKS[pick as usize % STACKS.len()], yaml);
    }
});
