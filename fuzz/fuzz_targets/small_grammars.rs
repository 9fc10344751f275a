//! See `gatehouse::fuzzing::small_grammars`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    gatehouse::fuzzing::small_grammars(data);
});
