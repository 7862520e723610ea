//! Digest strings and upload ids, the references every blob and upload path is built from:
//! nothing panics, and what is accepted is exactly canonical (re-printed unchanged, fixed-length
//! lowercase hex) or, for upload ids, free of anything that could leave the uploads folder.
#![no_main]

use _core::digest::{validate_digest, Algorithm, Digest};
use _core::store::validate_upload_id;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Digest::parse(text) {
        Ok(d) => {
            assert_eq!(d.to_string(), text, "accepted digest is not canonical");
            assert!(Algorithm::OCI.contains(&d.algorithm()));
            assert_eq!(d.hex().len(), d.algorithm().hex_len());
            assert!(d
                .hex()
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
            let (alg, hex) = validate_digest(text).unwrap();
            assert_eq!(
                (alg.as_str(), hex.as_str()),
                (d.algorithm().name(), d.hex())
            );
        }
        Err(e) => {
            assert!(validate_digest(text).is_err());
            // Errors echo at most 80 characters of what they were given, each at most 10
            // once escaped (`\u{10ffff}`): bounded, however long the input.
            assert!(
                e.to_string().len() < 1024,
                "error message grows with the input"
            );
        }
    }
    if validate_upload_id(text).is_ok() {
        assert!((1..=128).contains(&text.len()));
        assert!(!text.contains(['/', '.', '\\', '\0']));
    }
});
