//! The request decoders that live where their unit tests cannot go: ids, and the spec a
//! bundle's config.json holds. None of them may panic, whatever a client sends.

use proptest::prelude::*;
use tether_protos::ttrpc::Code;
use tether_shim::{bundle::validate_id, launch};

/// The longest name a file may have (NAME_MAX).
const NAME_MAX: usize = 255;

#[test]
fn an_id_too_long_to_name_its_files_is_an_invalid_argument() {
    // 253 bytes: `exec-<id>.json` would be 263 bytes, past what a file name can hold.
    let e = validate_id(&"a".repeat(253)).unwrap_err();
    assert_eq!(e.code(), Code::INVALID_ARGUMENT);
    assert!(e.to_string().contains("1-245 characters"), "{e}");
    let longest = "a".repeat(245);
    validate_id(&longest).unwrap();
    assert_eq!(format!("exec-{longest}.json").len(), NAME_MAX);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Every id is accepted or refused as InvalidArgument, and an accepted one names its
    /// files: the exec spec and pid files fit in a file name, inside the bundle.
    #[test]
    fn any_id_is_valid_or_refused(id in prop_oneof![any::<String>(), "[a-z0-9._:@+/-]{0,300}"]) {
        match validate_id(&id) {
            Ok(()) => {
                prop_assert!("exec-".len() + id.len() + ".json".len() <= NAME_MAX);
                prop_assert!(!id.contains('/') && id != "." && id != "..");
            }
            Err(e) => prop_assert_eq!(e.code(), Code::INVALID_ARGUMENT),
        }
    }

    /// Any config.json gives a group: its annotation when there is one, else the id.
    #[test]
    fn any_spec_gives_a_group(
        spec in prop_oneof![
            any::<String>(),
            r#"\{"annotations":(\{"io.kubernetes.cri.sandbox-id":("[a-z]{0,4}"|[0-9]|null|\[\])\}|[0-9]|"x"|null)\}"#,
        ]
    ) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("config.json"), &spec).unwrap();
        let group = launch::grouping(dir.path(), "c1");
        prop_assert!(!group.is_empty());
    }
}
