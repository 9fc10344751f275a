//! See `gatehouse::fuzzing::aggregate_template`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    gatehouse::fuzzing::aggregate_template(data);
});
