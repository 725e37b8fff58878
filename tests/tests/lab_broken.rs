//! Fails on purpose, to prove that `cargo xtask lab` fails when a guest test fails, kills
//! QEMU, or hangs. Not part of `--all`. Run it with:
//! - `cargo xtask lab --test lab_broken`: an assertion fails;
//! - `cargo xtask lab --test lab_broken -- --ignored qemu_dies`: edu's out-of-bounds DMA
//!   aborts QEMU 7.2;
//! - `cargo xtask lab --test lab_broken --test-timeout 10 -- --ignored hangs`: the guest
//!   kills the hung binary (or `--timeout 40`: the host kills QEMU).
//!
//! Outside the lab these skip like every lab test.

mod lab_support;

use lab_support::*;

#[test]
fn fails_an_assertion() {
    let Some((_, sysfs)) = lab_device("fails_an_assertion") else {
        return;
    };
    let edu = Edu::open_container(&sysfs);
    assert_eq!(
        edu.read32(REG_ID),
        0xdead_beef,
        "deliberately wrong expectation"
    );
}

#[test]
#[ignore = "kills QEMU on purpose; run with -- --ignored qemu_dies"]
fn qemu_dies() {
    let Some((_, sysfs)) = lab_device("qemu_dies") else {
        return;
    };
    let edu = Edu::open_container(&sysfs);
    // A full 4096-byte transfer into the device buffer: QEMU 7.2's edu aborts the VM.
    edu.write64(REG_DMA_SRC, 0x10_0000);
    edu.write64(REG_DMA_DST, EDU_BUF);
    edu.write64(REG_DMA_COUNT, 4096);
    edu.write64(REG_DMA_CMD, 1);
    std::thread::sleep(std::time::Duration::from_secs(30));
    panic!("QEMU survived an out-of-bounds edu DMA");
}

#[test]
#[ignore = "hangs on purpose; run with --test-timeout 10 -- --ignored hangs"]
fn hangs() {
    if lab_device("hangs").is_none() {
        return;
    }
    loop {
        std::thread::sleep(std::time::Duration::from_secs(1));
    }
}
