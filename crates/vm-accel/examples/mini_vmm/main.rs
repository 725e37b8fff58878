//! A mini VMM that passes one PCI function into a KVM guest: the worked example of
//! docs/embedding.md. See `vmm` (VM, vCPU, PCI config mechanism #1, exit loop) and `guest`
//! (the programs the guest runs).
//!
//! ```text
//! mini_vmm soft [--move-bar]                       edu program, software edu (/dev/kvm only)
//! mini_vmm vfio BDF edu|msix|large-bar [--iommufd] [--move-bar]
//! ```

mod guest;
mod local;
mod scenarios;
mod soft_edu;
mod vfio;
mod vmm;

use std::sync::Arc;

use anyhow::{bail, Context, Result};
use vm_vfio::access::{BackendKind, IrqIndex, RegionIndex};

use crate::guest::{action, Scenario};

const USAGE: &str = "usage: mini_vmm soft [--move-bar] | mini_vmm vfio BDF edu|msix|large-bar [--iommufd] [--move-bar]";

fn main() -> Result<()> {
    env_logger::init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let flag = |f: &str| args.iter().any(|a| a == f);
    let move_bar = flag("--move-bar");
    let mut vm = vmm::Vm::new()?;
    match args.first().map(String::as_str) {
        Some("soft") => {
            let dev = soft_edu::device()?;
            let _engine = soft_edu::Engine::start(dev.clone(), vm.mem.clone(), true)?;
            let mut attached = local::LocalAttach::new(dev, Arc::clone(&vm.fd))?;
            let r = scenarios::run(
                &mut vm,
                &mut attached,
                Scenario::Edu { move_bar },
                &mut |a| bail!("no host action {a:#x} here"),
            )?;
            scenarios::check_edu(&vm, &r, move_bar)?;
            println!("mini_vmm: the guest found edu, read its ID, ran DMA both ways and took the MSI: {r:x?}");
        }
        Some("vfio") => {
            let bdf = args.get(1).context(USAGE)?.parse().context("BDF")?;
            let kind = if flag("--iommufd") {
                BackendKind::Iommufd
            } else {
                BackendKind::Legacy
            };
            let mut dev = vfio::VfioAttach::new(&vm, bdf, kind)?;
            match args.get(2).map(String::as_str) {
                Some("edu") => {
                    let r =
                        scenarios::run(&mut vm, &mut dev, Scenario::Edu { move_bar }, &mut |a| {
                            bail!("no host action {a:#x} here")
                        })?;
                    scenarios::check_edu(&vm, &r, move_bar)?;
                    println!("mini_vmm: {bdf} ({kind}): edu ID, DMA both ways and the MSI in the guest: {r:x?}");
                }
                Some("msix") => {
                    let device = dev.vfio() as *const vm_vfio::access::Device;
                    let mut host = |a: u32| -> Result<()> {
                        let v = a.checked_sub(action::FIRE_MSIX).context("unknown action")?;
                        // SAFETY: `dev` outlives the run and is only read here.
                        unsafe { &*device }.trigger(IrqIndex::Msix, v)?;
                        Ok(())
                    };
                    let r = scenarios::run(&mut vm, &mut dev, Scenario::Msix, &mut host)?;
                    scenarios::check_msix(&r)?;
                    println!("mini_vmm: {bdf} ({kind}): MSI-X vectors through the emulated table, masked one pending then delivered: {r:x?}");
                }
                Some("large-bar") => {
                    let bar = 2;
                    let size = dev.vfio().region(RegionIndex::Bar(bar))?.size;
                    dev.vfio().write_region(
                        RegionIndex::Bar(bar),
                        size - 16,
                        &guest::FAR_MAGIC.to_le_bytes(),
                    )?;
                    let r =
                        scenarios::run(&mut vm, &mut dev, Scenario::LargeBar { bar }, &mut |a| {
                            bail!("no host action {a:#x} here")
                        })?;
                    let mut far = [0u8; 8];
                    dev.vfio()
                        .read_region(RegionIndex::Bar(bar), size - 8, &mut far)?;
                    scenarios::check_large_bar(&r, size, u64::from_le_bytes(far))?;
                    println!("mini_vmm: {bdf} ({kind}): the far end of a {size:#x}-byte BAR read and written by the guest: {r:x?}");
                }
                _ => bail!(USAGE),
            }
        }
        _ => bail!(USAGE),
    }
    Ok(())
}
