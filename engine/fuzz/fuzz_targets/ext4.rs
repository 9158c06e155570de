#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    tintype::fuzz::ext4(data);
});
