//! The OpenAPI document served by the real appliance is valid OpenAPI 3, checked by
//! `openapi-spec-validator` (PyPI), an independent validator.

use cosm_e2e::Appliance;
use std::path::PathBuf;
use std::process::Command;

fn validator() -> PathBuf {
    let venv = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../.venv/bin/openapi-spec-validator");
    if venv.exists() {
        return venv;
    }
    let found = Command::new("sh")
        .args(["-c", "command -v openapi-spec-validator"])
        .output()
        .ok();
    match found.filter(|o| o.status.success()) {
        Some(o) => PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()),
        None => panic!(
            "openapi-spec-validator is not installed: run `make deps` (it creates .venv and pip-installs it), or `pip install openapi-spec-validator`"
        ),
    }
}

#[test]
fn served_openapi_document_is_valid() {
    let app = Appliance::start().unwrap();
    let doc = reqwest::blocking::get(format!("{}/api/v1/openapi.json", app.url()))
        .unwrap()
        .text()
        .unwrap();
    let path = app.dir.path().join("openapi.json");
    std::fs::write(&path, &doc).unwrap();
    let out = Command::new(validator()).arg(&path).output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && text.contains("OK"),
        "openapi-spec-validator refused the document:\n{text}"
    );
}
