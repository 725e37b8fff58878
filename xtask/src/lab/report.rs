//! Turns the guest's serial console into a per-test summary.

use std::collections::BTreeMap;

use super::build::BuiltTest;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Pass,
    Fail,
    Ignored,
    /// The binary never reported this test (it died, hung, or QEMU went away).
    Missing,
}

impl Status {
    fn label(self) -> &'static str {
        match self {
            Status::Pass => "pass",
            Status::Fail => "FAIL",
            Status::Ignored => "ignored",
            Status::Missing => "MISSING",
        }
    }
}

/// The result of one test binary.
#[derive(Debug)]
pub struct BinaryResult {
    pub name: String,
    /// Exit status from `@@LAB-END`, None when the binary never finished.
    pub rc: Option<i32>,
    pub tests: BTreeMap<String, Status>,
}

impl BinaryResult {
    pub fn ok(&self) -> bool {
        self.rc == Some(0)
            && self
                .tests
                .values()
                .all(|s| matches!(s, Status::Pass | Status::Ignored))
    }
}

/// Everything the host learned from the console.
#[derive(Debug)]
pub struct Report {
    pub binaries: Vec<BinaryResult>,
    /// `@@LAB-ERROR` lines: setup failed in the guest.
    pub errors: Vec<String>,
    pub done: bool,
}

impl Report {
    pub fn ok(&self) -> bool {
        self.done && self.errors.is_empty() && self.binaries.iter().all(BinaryResult::ok)
    }
}

pub fn parse(serial: &[String], planned: &[BuiltTest]) -> Report {
    let mut binaries: Vec<BinaryResult> = planned
        .iter()
        .map(|t| BinaryResult {
            name: t.name.to_string(),
            rc: None,
            tests: t
                .expected
                .iter()
                .map(|n| (n.clone(), Status::Missing))
                .collect(),
        })
        .collect();
    let mut errors = Vec::new();
    let mut done = false;
    let mut current: Option<usize> = None;
    // libtest prints "test NAME ... " and the verdict on the same line, unless the test
    // wrote to stderr meanwhile: then the verdict ends a later line.
    let mut pending: Option<String> = None;
    for line in serial {
        if let Some(name) = line.strip_prefix("@@LAB-BEGIN ") {
            current = binaries.iter().position(|b| b.name == name.trim());
            pending = None;
            continue;
        }
        if let Some(rest) = line.strip_prefix("@@LAB-END ") {
            let mut parts = rest.split_whitespace();
            let name = parts.next().unwrap_or_default();
            let rc = parts
                .next()
                .and_then(|p| p.strip_prefix("rc="))
                .and_then(|v| v.parse().ok());
            if let Some(b) = binaries.iter_mut().find(|b| b.name == name) {
                b.rc = rc;
            }
            current = None;
            continue;
        }
        if let Some(e) = line.strip_prefix("@@LAB-ERROR ") {
            errors.push(e.to_string());
            continue;
        }
        if line.starts_with("@@LAB-DONE") {
            done = true;
            continue;
        }
        let Some(idx) = current else { continue };
        let (name, verdict) = match line
            .strip_prefix("test ")
            .and_then(|l| l.split_once(" ... "))
        {
            Some((name, rest)) if !name.contains(' ') => {
                let v = verdict_of(rest);
                if v.is_none() {
                    pending = Some(name.to_string());
                }
                (Some(name.to_string()), v)
            }
            // A verdict after the test's own stderr output stands alone on its line.
            _ => (
                pending.clone(),
                verdict_of(line.trim()).filter(|_| is_bare_verdict(line.trim())),
            ),
        };
        if let (Some(name), Some(status)) = (name, verdict) {
            binaries[idx].tests.insert(name, status);
            pending = None;
        }
    }
    Report {
        binaries,
        errors,
        done,
    }
}

fn is_bare_verdict(line: &str) -> bool {
    matches!(line, "ok" | "FAILED") || line.starts_with("ignored")
}

fn verdict_of(text: &str) -> Option<Status> {
    let t = text.trim_end();
    if t.ends_with("FAILED") {
        Some(Status::Fail)
    } else if t == "ok" || t.ends_with(" ok") || t.ends_with("... ok") {
        Some(Status::Pass)
    } else if t.starts_with("ignored") || t.ends_with(" ignored") {
        Some(Status::Ignored)
    } else {
        None
    }
}

/// Prints the per-test table and the counts.
pub fn print(report: &Report) {
    let (mut pass, mut fail, mut ignored, mut missing) = (0, 0, 0, 0);
    println!("lab results:");
    for b in &report.binaries {
        let rc =
            b.rc.map_or("did not finish".to_string(), |rc| format!("exit {rc}"));
        println!("  {} ({rc})", b.name);
        for (test, status) in &b.tests {
            println!("    {:<8} {test}", status.label());
            match status {
                Status::Pass => pass += 1,
                Status::Fail => fail += 1,
                Status::Ignored => ignored += 1,
                Status::Missing => missing += 1,
            }
        }
        if b.rc.is_some_and(|rc| rc != 0) && b.tests.values().all(|s| *s != Status::Fail) {
            println!(
                "    FAIL     (the binary exited {} without a failing test: crashed?)",
                b.rc.unwrap_or(-1)
            );
        }
    }
    for e in &report.errors {
        println!("  guest error: {e}");
    }
    println!("  {pass} passed, {fail} failed, {ignored} ignored, {missing} missing");
    // The same totals in libtest's words, so tools that add up `test result:` lines (like
    // `cargo xtask hw-test`) count the lab's tests. A missing result is a failure.
    let verdict = if report.ok() { "ok" } else { "FAILED" };
    println!(
        "test result: {verdict}. {pass} passed; {} failed; {ignored} ignored; 0 measured; 0 filtered out",
        fail + missing
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn planned() -> Vec<BuiltTest> {
        vec![BuiltTest {
            name: "lab_x",
            exe: PathBuf::new(),
            expected: vec!["a".into(), "b".into(), "c".into()],
        }]
    }

    fn lines(s: &str) -> Vec<String> {
        s.lines().map(str::to_string).collect()
    }

    #[test]
    fn parses_verdicts_and_missing_tests() {
        let serial = lines(
            "@@LAB-READY\n@@LAB-BEGIN lab_x\nrunning 3 tests\ntest a ... ok\ntest b ... \n\
             some stderr\nFAILED\n@@LAB-END lab_x rc=101\n@@LAB-DONE",
        );
        let r = parse(&serial, &planned());
        assert!(r.done);
        assert_eq!(r.binaries[0].rc, Some(101));
        assert_eq!(r.binaries[0].tests["a"], Status::Pass);
        assert_eq!(r.binaries[0].tests["b"], Status::Fail);
        assert_eq!(r.binaries[0].tests["c"], Status::Missing);
        assert!(!r.ok());
    }

    #[test]
    fn all_pass_is_ok_and_no_done_is_not() {
        let text = "@@LAB-BEGIN lab_x\ntest a ... ok\ntest b ... ignored\ntest c ... ok\n\
                    @@LAB-END lab_x rc=0\n";
        let r = parse(&lines(text), &planned());
        assert!(!r.ok(), "no @@LAB-DONE: QEMU died");
        let r = parse(&lines(&format!("{text}@@LAB-DONE")), &planned());
        assert!(r.ok());
    }

    #[test]
    fn test_output_ending_like_a_verdict_is_not_one() {
        let text = "@@LAB-BEGIN lab_x\ntest a ... \nthe probe is ok\nok\ntest b ... ok\n\
                    test c ... ignored, needs X\n@@LAB-END lab_x rc=0\n@@LAB-DONE";
        let r = parse(&lines(text), &planned());
        assert_eq!(r.binaries[0].tests["a"], Status::Pass);
        assert_eq!(r.binaries[0].tests["c"], Status::Ignored);
        assert!(r.ok());
        let text =
            "@@LAB-BEGIN lab_x\ntest a ... \nthe probe is ok\n@@LAB-END lab_x rc=0\n@@LAB-DONE";
        assert_eq!(
            parse(&lines(text), &planned()).binaries[0].tests["a"],
            Status::Missing
        );
    }

    #[test]
    fn setup_errors_fail_the_run() {
        let text = "@@LAB-ERROR insmod x failed\n@@LAB-DONE";
        let r = parse(&lines(text), &planned());
        assert_eq!(r.errors, vec!["insmod x failed".to_string()]);
        assert!(!r.ok());
    }

    #[test]
    fn nonzero_exit_without_failed_test_fails() {
        let text = "@@LAB-BEGIN lab_x\ntest a ... ok\ntest b ... ok\ntest c ... ok\n\
                    @@LAB-END lab_x rc=139\n@@LAB-DONE";
        assert!(!parse(&lines(text), &planned()).ok());
    }
}
