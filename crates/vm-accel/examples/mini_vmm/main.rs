//! A mini VMM that passes one PCI function into a KVM guest through vm-accel's
//! `AttachedDevice`: the worked example of docs/embedding.md. See `vmm` (VM, vCPU, PCI
//! config mechanism #1, exit loop), `guest` (the programs the guest runs) and `scenarios`.
//!
//! ```text
//! mini_vmm soft edu|msix|large-bar [--move-bar]    software stand-ins (/dev/kvm only)
//! mini_vmm vfio BDF edu|msix|large-bar [--iommufd] [--move-bar]
//! ```

mod guest;
mod scenarios;
mod soft;
mod vmm;

use anyhow::{bail, Context, Result};
use vm_accel::attach::{AttachOptions, AttachedDevice};
use vm_vfio::access::{BackendChoice, BackendKind};
use vm_vfio::bind::Paths;

use crate::scenarios::Fire;

const USAGE: &str = "usage: mini_vmm soft edu|msix|large-bar [--move-bar] | mini_vmm vfio BDF edu|msix|large-bar [--iommufd] [--move-bar]";

fn main() -> Result<()> {
    env_logger::init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let flag = |f: &str| args.iter().any(|a| a == f);
    let move_bar = flag("--move-bar");
    let mut vm = vmm::Vm::new()?;
    let avm = vm.attach_vm()?;
    let opts = AttachOptions::default();
    let (mut dev, what, engine, fire) = match args.first().map(String::as_str) {
        Some("soft") => {
            let what = args.get(1).context(USAGE)?.clone();
            let backend = match what.as_str() {
                "edu" => soft::device()?,
                "msix" => soft::msix_device()?,
                "large-bar" => soft::large_bar_device(64 << 30)?,
                _ => bail!(USAGE),
            };
            let engine = (what == "edu")
                .then(|| soft::Engine::start(backend.clone(), vm.mem.clone(), true))
                .transpose()?;
            let fire = Fire::Soft(backend.clone());
            (
                AttachedDevice::attach(&avm, backend, &opts)?,
                what,
                engine,
                fire,
            )
        }
        Some("vfio") => {
            let bdf = args.get(1).context(USAGE)?.parse().context("BDF")?;
            let kind = if flag("--iommufd") {
                BackendKind::Iommufd
            } else {
                BackendKind::Legacy
            };
            let d = AttachedDevice::attach_vfio(
                &avm,
                &Paths::new("/sys"),
                bdf,
                BackendChoice::Force(kind),
                &opts,
            )?;
            (d, args.get(2).context(USAGE)?.clone(), None, Fire::Vfio)
        }
        _ => bail!(USAGE),
    };
    let result = match what.as_str() {
        "edu" => scenarios::edu(&mut vm, &mut dev, move_bar),
        "msix" => scenarios::msix(&mut vm, &mut dev, &fire),
        "large-bar" => scenarios::large_bar(&mut vm, &mut dev, 2),
        _ => Err(anyhow::anyhow!(USAGE)),
    };
    drop(engine);
    let report = dev.detach();
    let r = result?;
    if !report.errors.is_empty() {
        bail!("detach: {:?}", report.errors);
    }
    println!("mini_vmm: {what} passed; the guest reported {r:x?}");
    Ok(())
}
