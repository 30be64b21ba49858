//! The limits commands, run as the real binary.
use std::process::Command;

fn coordinator() -> Command {
    Command::new(env!("CARGO_BIN_EXE_faultline-coordinator"))
}

#[test]
fn show_then_check_round_trips_each_profile() {
    for profile in ["production", "staging"] {
        let shown = coordinator()
            .args(["show-limits", "--profile", profile])
            .output()
            .unwrap();
        assert!(shown.status.success());
        let text = String::from_utf8(shown.stdout).unwrap();
        assert!(text.starts_with("chaos_limits:"), "{text}");
        let path =
            std::env::temp_dir().join(format!("fl-limits-{profile}-{}.yaml", std::process::id()));
        std::fs::write(&path, &text).unwrap();
        let checked = coordinator()
            .arg("check-limits")
            .arg(&path)
            .output()
            .unwrap();
        assert!(checked.status.success());
        assert_eq!(String::from_utf8(checked.stdout).unwrap(), text);
        let _ = std::fs::remove_file(path);
    }
}

#[test]
fn an_invalid_file_is_refused_with_the_reason() {
    let path = std::env::temp_dir().join(format!("fl-limits-bad-{}.yaml", std::process::id()));
    std::fs::write(
        &path,
        "chaos_limits:\n  packet_loss: {max_loss: 120%, max_duration: 60s}\n",
    )
    .unwrap();
    let out = coordinator()
        .arg("check-limits")
        .arg(&path)
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&path);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("120"), "{err}");
}
