#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| paracord_api::fuzzing::paracord_bodies(data));
