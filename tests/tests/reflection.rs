//! gRPC reflection as a new user meets it: Python's grpcio-reflection client (v1alpha
//! only, like Postman and older grpcurl) lists the coordinator's services and calls
//! ListNodes with messages built from the reflected descriptors alone.
use faultline_tests::fleet::{Fleet, Role};
use serde_json::Value;

#[test]
fn a_v1alpha_reflection_client_lists_the_services_and_calls_list_nodes() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf();
    let python = root.join("target/pyenv/bin/python");
    assert!(
        python.exists(),
        "run `cargo xtask setup` first: it makes {}",
        python.display()
    );
    let fleet = Fleet::new(1, &[], &[]);
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", &fleet.ctl.name])
        .arg(&python)
        .arg(root.join("tests/py/reflect.py"))
        .arg("127.0.0.1:7443")
        .arg(fleet.dir.join("tls/ca.pem"))
        .arg("faultline-coordinator")
        .arg(fleet.token(Role::Viewer))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    // The listing through v1alpha (the Python client's own), then through v1 (what
    // grpcurl speaks; the script asks it with v1alpha's wire-identical messages).
    let listed = |key: &str, want: &[&str]| {
        let got: Vec<&str> = v[key]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap())
            .collect();
        for w in want {
            assert!(got.contains(w), "{w} missing from {key} {got:?}");
        }
    };
    listed(
        "services",
        &[
            "faultline.v1.AgentService",
            "faultline.v1.ChaosService",
            "grpc.health.v1.Health",
            "grpc.reflection.v1alpha.ServerReflection",
        ],
    );
    listed(
        "v1_services",
        &[
            "faultline.v1.ChaosService",
            "grpc.reflection.v1.ServerReflection",
        ],
    );
    assert_eq!(v["nodes"], serde_json::json!(["node-1"]));
    assert_eq!(v["connected"], serde_json::json!([true]));
}
