#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| paracord_service::fuzzing::x_matrix(data));
