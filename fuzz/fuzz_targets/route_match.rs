//! See `gatehouse::fuzzing::route_match`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    gatehouse::fuzzing::route_match(data);
});
