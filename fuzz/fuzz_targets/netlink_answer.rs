#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| headcni::fuzzing::netlink_answer(data));
