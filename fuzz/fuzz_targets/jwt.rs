//! See `gatehouse::fuzzing::jwt`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    gatehouse::fuzzing::jwt(data);
});
