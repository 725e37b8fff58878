//! Every command's `--json` output against the published JSON Schemas (docs/schemas/), and
//! the one vocabulary: a field name means one JSON type in every document.

// Test helpers: a panic with the reason is how a test reports failure.
#![allow(clippy::unwrap_used)]

mod fake_gpu;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{json, Value};
use vm_accel::{vm_cuda, vm_pci};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The schema file a document names: `vm-accel.show/v2` -> docs/schemas/show.json.
fn schema_for(doc: &Value) -> (String, Value) {
    let name = doc["schema"]
        .as_str()
        .unwrap_or_else(|| panic!("no `schema` field: {doc}"));
    let file = name
        .strip_prefix("vm-accel.")
        .and_then(|n| n.split('/').next())
        .unwrap_or_else(|| panic!("not a vm-accel schema name: {name}"));
    let path = workspace()
        .join("docs/schemas")
        .join(format!("{file}.json"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let schema: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        schema["$defs"]["document"]["properties"]["schema"]["const"],
        name,
        "{} documents another version than the CLI prints",
        path.display()
    );
    (file.to_string(), schema)
}

fn assert_valid(what: &str, doc: &Value) {
    let (file, schema) = schema_for(doc);
    jsonschema::meta::validate(&schema)
        .unwrap_or_else(|e| panic!("{file}.json is no JSON Schema: {e}"));
    let v = jsonschema::validator_for(&schema).unwrap_or_else(|e| panic!("{file}.json: {e}"));
    let errors: Vec<String> = v
        .iter_errors(doc)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    assert!(
        errors.is_empty(),
        "`{what}` does not match docs/schemas/{file}.json:\n{}\n{doc:#}",
        errors.join("\n")
    );
}

/// Runs the CLI; returns the JSON document it printed, if it printed one.
fn run(root: &Path, args: &[&str], run_dir: &Path) -> Option<Value> {
    let out = Command::new(env!("CARGO_BIN_EXE_vm-accel"))
        .arg("--sysfs-root")
        .arg(root)
        .args(args)
        .arg("--json")
        .env("VM_ACCEL_RUN_DIR", run_dir)
        .output()
        .expect("run vm-accel");
    if out.stdout.is_empty() {
        return None;
    }
    Some(serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "`{}` printed no JSON ({e}): {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout)
        )
    }))
}

/// Every document the CLI prints on the fixture hosts: list, show and check of every device,
/// bind dry runs, failing binds and unbinds, restore, cuda info.
fn all_documents() -> Vec<(String, Value)> {
    let t = tempfile::tempdir().unwrap();
    let iommu = t.path().join("iommu-host");
    vm_pci::fixture::iommu_host(&iommu).unwrap();
    // A copy of the how-to's host that a real (failing: no kernel acts on a tree) bind may
    // write to.
    let writable = t.path().join("gpu-audio-host");
    vm_pci::fixture::gpu_audio_host(&writable).unwrap();
    let fixtures = workspace().join("tests/fixtures/sysfs");
    let roots = [
        fixtures.join("h200-host"),
        fixtures.join("h200x2-host"),
        fixtures.join("gpu-audio-host"),
        iommu.clone(),
    ];
    let run_dir = t.path().join("run");
    let mut docs = Vec::new();
    let mut push = |root: &Path, args: &[&str]| {
        if let Some(d) = run(root, args, &run_dir) {
            docs.push((format!("{} on {}", args.join(" "), root.display()), d));
        }
    };
    for root in &roots {
        push(root, &["list"]);
        push(root, &["list", "--accelerators"]);
        push(root, &["list", "--topology"]);
        push(root, &["check"]);
        let inv = vm_pci::Inventory::scan(&vm_pci::SysfsRoot::new(root)).unwrap();
        for d in &inv.devices {
            let bdf = d.bdf.to_string();
            push(root, &["show", &bdf]);
            push(root, &["show", &bdf, "--topology"]);
            push(root, &["check", &bdf]);
            push(root, &["bind", &bdf, "--dry-run"]);
        }
    }
    push(
        &writable,
        &["bind", "0000:41:00.0", "--probe-timeout-ms", "50"],
    );
    push(&writable, &["unbind", "0000:41:00.0"]);
    push(&writable, &["restore", "--dry-run"]);
    push(&writable, &["restore"]);
    push(&writable, &["cuda", "info"]);
    push(&writable, &["cuda", "check"]);
    docs
}

/// A CUDA device as the driver would describe it (none here: built without CUDA, no GPU),
/// with every optional field present so the schema sees its type.
fn cuda_device() -> vm_cuda::DeviceInfo {
    vm_cuda::DeviceInfo {
        uuid: Some("GPU-8f6c2a1e-0000-0000-0000-000000000000".into()),
        peak_memory_bandwidth_bytes_per_s: Some(4.9e12),
        ..fake_gpu::h200(0, 0x41, 0)
    }
}

/// The CUDA documents a GPU host prints, built from vm-cuda's own types the way the CLI
/// builds them (`cuda check` flattens the report into the document).
fn cuda_documents() -> Vec<(String, Value)> {
    let info = json!({
        "schema": "vm-accel.cuda-info/v2",
        "built_with_cuda": true,
        "driver_version": "13.0",
        "devices": [cuda_device()],
        "topology": {
            "gpus": [{"ordinal": 0, "bdf": "0000:41:00.0", "numa_node": 1, "pci_path": ["0000:40:01.0"]}],
            "links": [],
        },
        "error": null,
    });
    let report = vm_cuda::health::HealthReport {
        device: cuda_device(),
        driver_version: (13, 0),
        checks: vec![vm_cuda::health::CheckResult {
            name: "d2d_copy",
            passed: false,
            detail: "1900 GB/s, 39% of peak".into(),
            elapsed_ms: 1.5,
            failure: Some(vm_cuda::health::Failure::Slow),
        }],
        tested_memory_bytes: 1 << 30,
        bandwidth: Some(vm_cuda::health::Bandwidth {
            copy_bytes: 1 << 30,
            copied_gbs: 1900.0,
            traffic_gbs: 3800.0,
            peak_gbs: Some(4900.0),
            fraction_of_peak: Some(0.78),
        }),
        passed: false,
        verdict: vm_cuda::health::Verdict::Busy,
        other_users: vec![vm_cuda::sharing::GpuUser {
            pid: 4242,
            comm: "python3".into(),
        }],
        busy: Some("other processes held the GPU: pid 4242 (python3)".into()),
        elapsed_ms: 812.0,
    };
    let mut check = serde_json::to_value(&report).unwrap();
    check["schema"] = json!("vm-accel.cuda-check/v2");
    let link = vm_cuda::PeerLink {
        src: 0,
        dst: 1,
        access_supported: true,
        native_atomics: true,
        performance_rank: 0,
        link: vm_cuda::LinkKind::Nvlink,
    };
    let all = vm_cuda::all_gpus::AllReport {
        passed: false,
        verdict: vm_cuda::health::Verdict::Busy,
        devices: vec![
            vm_cuda::all_gpus::DeviceOutcome {
                ordinal: 0,
                report: Some(report.clone()),
                error: None,
            },
            vm_cuda::all_gpus::DeviceOutcome {
                ordinal: 1,
                report: None,
                error: Some("CUDA_ERROR_ECC_UNCORRECTABLE".into()),
            },
        ],
        peers: vm_cuda::all_gpus::PeerTests {
            skipped: None,
            pairs: vec![vm_cuda::all_gpus::PeerCopy {
                src: 0,
                dst: 1,
                link,
                passed: true,
                detail: "1 GiB intact".into(),
                copy_bytes: 1 << 30,
                gbs: Some(396.0),
                failure: None,
            }],
            without_access: Vec::new(),
            busy: false,
        },
        devices_elapsed_ms: 900.0,
        peers_elapsed_ms: 40.0,
    };
    let mut all = serde_json::to_value(&all).unwrap();
    all["schema"] = json!("vm-accel.cuda-check-all/v2");
    // attach-test needs /dev/vfio and a bound device (the lab, a GPU host): the document as
    // cli/attach.rs writes it.
    let attach = json!({
        "schema": "vm-accel.attach-test/v1",
        "bdf": "0000:41:00.0",
        "backend": "iommufd",
        "kvm_vfio_registered": true,
        "guest_ram_mib": 64,
        "timings_us": {"open_and_kvm_vfio_add": 900, "dma_map": 1200, "memslots": 80, "total": 2300, "detach": 700},
        "bars": [{"index": 0, "gpa": 0xe000_0000u64, "size": 1u64 << 24, "is_64bit": true, "prefetchable": false}],
        "msi_vectors": 1,
        "msix_vectors": 8,
        "detach_errors": [],
        "reset_on_detach": true,
        "attached": true,
    });
    vec![
        ("cuda info on a GPU host".into(), info),
        ("cuda check on a GPU host".into(), check),
        ("cuda check --all on a GPU host".into(), all),
        ("attach-test on a vfio host".into(), attach),
    ]
}

#[test]
fn every_commands_json_matches_its_schema() {
    let docs: Vec<(String, Value)> = all_documents()
        .into_iter()
        .chain(cuda_documents())
        .collect();
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for (what, doc) in &docs {
        assert_valid(what, doc);
        *seen
            .entry(doc["schema"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    // Each schema file is exercised by at least one real document.
    for entry in std::fs::read_dir(workspace().join("docs/schemas")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "json") {
            let stem = path.file_stem().unwrap().to_string_lossy().into_owned();
            assert!(
                seen.keys()
                    .any(|s| s.starts_with(&format!("vm-accel.{stem}/"))),
                "no document checked against {}: {seen:?}",
                path.display()
            );
        }
    }
}

#[test]
fn a_document_that_breaks_the_vocabulary_is_rejected() {
    // The old `show` shape (numeric ids, "0x" class) must fail the published schema: the
    // validation above is not vacuous.
    let root = workspace().join("tests/fixtures/sysfs/h200-host");
    let t = tempfile::tempdir().unwrap();
    let mut doc = run(&root, &["show", "0000:00:06.0"], t.path()).unwrap();
    assert_valid("show", &doc);
    doc["device"]["vendor_id"] = json!(4318);
    doc["device"]["class"] = json!("0x030200");
    let (_, schema) = schema_for(&doc);
    assert!(!jsonschema::is_valid(&schema, &doc));
}

/// JSON type of a value, with integers and floats both "number".
fn kind(v: &Value) -> Option<&'static str> {
    Some(match v {
        Value::Null => return None,
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    })
}

fn collect(v: &Value, at: &str, out: &mut BTreeMap<String, BTreeMap<&'static str, String>>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                let here = format!("{at}.{k}");
                if let Some(t) = kind(x) {
                    out.entry(k.clone())
                        .or_default()
                        .entry(t)
                        .or_insert(here.clone());
                }
                collect(x, &here, out);
            }
        }
        Value::Array(a) => a.iter().for_each(|x| collect(x, &format!("{at}[]"), out)),
        _ => {}
    }
}

#[test]
fn one_field_name_has_one_type_in_every_document() {
    let mut types = BTreeMap::new();
    for (_, doc) in all_documents().into_iter().chain(cuda_documents()) {
        let schema = doc["schema"].as_str().unwrap_or("?").to_string();
        collect(&doc, &schema, &mut types);
    }
    let clashes: Vec<String> = types
        .iter()
        .filter(|(_, t)| t.len() > 1)
        .map(|(k, t)| format!("`{k}`: {t:?}"))
        .collect();
    assert!(clashes.is_empty(), "{}", clashes.join("\n"));
    // The ids are strings: what lspci -nn prints.
    for k in ["vendor_id", "device_id", "class", "bdf", "driver_version"] {
        assert_eq!(types[k].keys().collect::<Vec<_>>(), vec![&"string"], "{k}");
    }
}
