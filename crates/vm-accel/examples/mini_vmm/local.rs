//! A minimal attach of a [`DeviceBackend`] to the mini VMM's VM, enough for the edu
//! program on a [`SoftDevice`]: shadow BAR registers (sizing, placement applied when
//! COMMAND.MEM is on) with the BAR's mmap-able parts as KVM memory slots, the ROM hidden,
//! and the MSI capability emulated (one vector -> a KVM MSI route + irqfd on the eventfd
//! the device signals). Everything else passes through.
//!
//! It exists so the VMM and its guest can be developed and tested on any host with
//! /dev/kvm; the library's `AttachedDevice` does the complete job (MSI-X, INTx, VFIO).

use std::sync::Arc;

use anyhow::{Context, Result};
use kvm_bindings::{
    kvm_irq_routing_entry, kvm_userspace_memory_region, KvmIrqRouting, KVM_IRQ_ROUTING_MSI,
};
use kvm_ioctls::VmFd;
use vm_accel::attach::{BarMap, DeviceBackend};
use vm_vfio::access::{IrqIndex, MmapAlign};
use vmm_sys_util::eventfd::EventFd;

use crate::vmm::PciFunction;

/// KVM memory slots from here up hold BARs (0 is RAM).
const FIRST_BAR_SLOT: u32 = 1;
/// The one GSI the MSI vector uses (above the irqchip's 0..23).
const MSI_GSI: u32 = 24;

struct Bar {
    index: u8,
    size: u64,
    /// Type and prefetch bits of the low register.
    flags: u32,
    is_64: bool,
    /// What the guest wrote (the register value, address bits only).
    shadow: u64,
    /// Where the slots are now (None: not mapped).
    applied: Option<u64>,
    maps: Vec<BarMap>,
    slots: Vec<u32>,
}

#[derive(Default)]
struct Msi {
    cap: u16,
    is_64: bool,
    control: u16,
    address: u64,
    data: u16,
    route: Option<EventFd>,
}

/// See the module documentation.
pub struct LocalAttach {
    dev: Arc<dyn DeviceBackend>,
    vm: Arc<VmFd>,
    bars: Vec<Bar>,
    command: u16,
    msi: Option<Msi>,
}

impl std::fmt::Debug for LocalAttach {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalAttach")
            .field("dev", &self.dev.name())
            .finish_non_exhaustive()
    }
}

fn cfg32(dev: &dyn DeviceBackend, off: u64) -> Result<u32> {
    let mut b = [0u8; 4];
    dev.config_read(off, &mut b)?;
    Ok(u32::from_le_bytes(b))
}

impl LocalAttach {
    pub fn new(dev: Arc<dyn DeviceBackend>, vm: Arc<VmFd>) -> Result<LocalAttach> {
        let mut bars = Vec::new();
        let mut next_slot = FIRST_BAR_SLOT;
        let mut i = 0u8;
        while i < 6 {
            let reg = cfg32(&*dev, 0x10 + 4 * u64::from(i))?;
            let is_64 = reg & 0b111 == 0b100;
            if let Some(region) = dev.bar_region(i) {
                let maps = dev
                    .map_bar(i, MmapAlign::Huge)
                    .with_context(|| format!("map BAR {i}"))?;
                let slots = (next_slot..next_slot + maps.len() as u32).collect();
                next_slot += maps.len() as u32;
                bars.push(Bar {
                    index: i,
                    size: region.size,
                    flags: reg & 0xf,
                    is_64,
                    shadow: 0,
                    applied: None,
                    maps,
                    slots,
                });
            }
            i += if is_64 { 2 } else { 1 };
        }
        let mut msi = None;
        let mut ptr = cfg32(&*dev, 0x34)? & 0xfc;
        for _ in 0..48 {
            if ptr == 0 {
                break;
            }
            let hdr = cfg32(&*dev, u64::from(ptr))?;
            if hdr & 0xff == 0x05 {
                let control = (hdr >> 16) as u16;
                msi = Some(Msi {
                    cap: ptr as u16,
                    is_64: control & 0x80 != 0,
                    control: control & !1,
                    ..Msi::default()
                });
                break;
            }
            ptr = (hdr >> 8) & 0xfc;
        }
        Ok(LocalAttach {
            dev,
            vm,
            bars,
            command: 0,
            msi,
        })
    }

    /// The emulated value of the config dword at `off` (dword aligned), if emulated.
    fn emulated(&self, off: u16) -> Option<u32> {
        if (0x10..0x28).contains(&off) {
            let reg = (off - 0x10) / 4;
            for b in &self.bars {
                let mask = !(b.size - 1);
                if u16::from(b.index) == reg {
                    return Some((b.shadow & mask) as u32 & !0xf | b.flags);
                }
                if b.is_64 && u16::from(b.index) + 1 == reg {
                    return Some(((b.shadow & mask) >> 32) as u32);
                }
            }
            return Some(0);
        }
        if off == 0x30 {
            return Some(0);
        }
        let m = self.msi.as_ref()?;
        let rel = off.checked_sub(m.cap)?;
        let data_at = if m.is_64 { 0xC } else { 0x8 };
        match rel {
            // id and next pointer from the device, the control word emulated
            0 => cfg32(&*self.dev, u64::from(off))
                .ok()
                .map(|v| (v & 0xffff) | u32::from(m.control) << 16),
            4 => Some(m.address as u32),
            8 if m.is_64 => Some((m.address >> 32) as u32),
            r if r == data_at => Some(u32::from(m.data)),
            _ => None,
        }
    }

    fn write_bar(&mut self, off: u16, value: u32) {
        let reg = (off - 0x10) / 4;
        for b in &mut self.bars {
            if u16::from(b.index) == reg {
                b.shadow = (b.shadow & !0xffff_ffff) | u64::from(value & !0xf);
            } else if b.is_64 && u16::from(b.index) + 1 == reg {
                b.shadow = (b.shadow & 0xffff_ffff) | u64::from(value) << 32;
            }
        }
    }

    /// Moves every BAR's slots to its shadow address (MEM decoding is on).
    fn apply_bars(&mut self) -> Result<()> {
        for b in &mut self.bars {
            let addr = b.shadow & !(b.size - 1);
            if b.applied == Some(addr) || addr == !(b.size - 1) || addr == 0 {
                continue; // unchanged, still the sizing pattern, or never placed
            }
            for (map, &slot) in b.maps.iter().zip(&b.slots) {
                let mut region = kvm_userspace_memory_region {
                    slot,
                    flags: 0,
                    guest_phys_addr: 0,
                    memory_size: 0,
                    userspace_addr: map.host as u64,
                };
                if b.applied.is_some() {
                    // SAFETY: size 0 deletes the slot; no memory is handed to KVM.
                    unsafe { self.vm.set_user_memory_region(region) }
                        .context("KVM_SET_USER_MEMORY_REGION (delete BAR slot)")?;
                }
                region.guest_phys_addr = addr + map.offset;
                region.memory_size = map.len;
                // SAFETY: `map` stays mapped as long as `self` (it owns the mapping).
                unsafe { self.vm.set_user_memory_region(region) }.with_context(|| {
                    format!(
                        "KVM_SET_USER_MEMORY_REGION (BAR{} slot {slot}: GPA {:#x}, {:#x} bytes, host {:#x})",
                        b.index, region.guest_phys_addr, region.memory_size, region.userspace_addr
                    )
                })?;
            }
            log::info!("BAR{} at {addr:#x} ({} slots)", b.index, b.slots.len());
            b.applied = Some(addr);
        }
        Ok(())
    }

    fn update_msi(&mut self) -> Result<()> {
        let Some(m) = self.msi.as_mut() else {
            return Ok(());
        };
        if let Some(fd) = m.route.take() {
            self.vm
                .unregister_irqfd(&fd, MSI_GSI)
                .context("KVM_IRQFD (deassign)")?;
            self.dev.disable_irqs(IrqIndex::Msi)?;
        }
        if m.control & 1 == 0 {
            return Ok(());
        }
        let mut routing = KvmIrqRouting::new(1).context("routing table")?;
        let mut e = kvm_irq_routing_entry {
            gsi: MSI_GSI,
            type_: KVM_IRQ_ROUTING_MSI,
            ..Default::default()
        };
        e.u.msi.address_lo = m.address as u32;
        e.u.msi.address_hi = (m.address >> 32) as u32;
        e.u.msi.data = u32::from(m.data);
        routing.as_mut_slice()[0] = e;
        self.vm
            .set_gsi_routing(&routing)
            .context("KVM_SET_GSI_ROUTING")?;
        let fd = EventFd::new(libc::EFD_NONBLOCK).context("eventfd")?;
        self.vm.register_irqfd(&fd, MSI_GSI).context("KVM_IRQFD")?;
        self.dev.set_irq_eventfds(IrqIndex::Msi, 0, &[Some(&fd)])?;
        m.route = Some(fd);
        Ok(())
    }

    fn bar_at(&self, gpa: u64, len: usize) -> Option<(u8, u64)> {
        self.bars.iter().find_map(|b| {
            let base = b.applied?;
            let off = gpa.checked_sub(base)?;
            (off + len as u64 <= b.size).then_some((b.index, off))
        })
    }
}

impl PciFunction for LocalAttach {
    fn config_read(&self, off: u16, data: &mut [u8]) {
        let dword = off & !3;
        let shift = usize::from(off & 3);
        let value = match self.emulated(dword) {
            Some(v) => Ok(v),
            None => cfg32(&*self.dev, u64::from(dword)),
        };
        let bytes = match value {
            Ok(v) => v.to_le_bytes(),
            Err(e) => {
                log::warn!("config read {off:#x}: {e:#}");
                [0xff; 4]
            }
        };
        let n = data.len().min(4 - shift);
        data[..n].copy_from_slice(&bytes[shift..shift + n]);
    }

    fn config_write(&mut self, off: u16, data: &[u8]) -> Result<()> {
        let dword = off & !3;
        let shift = usize::from(off & 3);
        if let Some(m) = self.msi.as_mut() {
            if dword == m.cap {
                if shift + data.len() <= 2 {
                    return Ok(()); // id and next pointer are read-only
                }
                // The control word: only the enable bit (one vector, MME 0) is writable.
                let mut cur = (u32::from(m.control) << 16).to_le_bytes();
                cur[shift..shift + data.len()].copy_from_slice(data);
                let control = (u32::from_le_bytes(cur) >> 16) as u16;
                let was = m.control & 1;
                m.control = (m.control & !1) | (control & 1);
                if m.control & 1 != was {
                    self.update_msi()?;
                }
                return Ok(());
            }
        }
        if self.emulated(dword).is_some() || (0x10..0x28).contains(&dword) {
            let mut cur = [0u8; 4];
            self.config_read(dword, &mut cur);
            cur[shift..shift + data.len()].copy_from_slice(data);
            let v = u32::from_le_bytes(cur);
            match dword {
                0x10..0x28 => {
                    self.write_bar(dword, v);
                    if self.command & 2 != 0 && v != u32::MAX {
                        self.apply_bars()?;
                    }
                }
                0x30 => {}
                _ => {
                    let m = self.msi.as_mut().context("MSI state")?;
                    let rel = dword - m.cap;
                    match rel {
                        4 => m.address = (m.address & !0xffff_ffff) | u64::from(v),
                        8 if m.is_64 => m.address = (m.address & 0xffff_ffff) | u64::from(v) << 32,
                        _ => m.data = v as u16,
                    }
                    if m.control & 1 != 0 {
                        self.update_msi()?;
                    }
                }
            }
            return Ok(());
        }
        self.dev.config_write(u64::from(off), data)?;
        if dword == 4 && shift == 0 {
            let was_on = self.command & 2 != 0;
            self.command = u16::from_le_bytes([data[0], data.get(1).copied().unwrap_or(0)]);
            if !was_on && self.command & 2 != 0 {
                self.apply_bars()?;
            }
        }
        Ok(())
    }

    fn mmio_read(&self, gpa: u64, data: &mut [u8]) -> Result<bool> {
        let Some((bar, off)) = self.bar_at(gpa, data.len()) else {
            return Ok(false);
        };
        self.dev.bar_read(bar, off, data)?;
        Ok(true)
    }

    fn mmio_write(&mut self, gpa: u64, data: &[u8]) -> Result<bool> {
        let Some((bar, off)) = self.bar_at(gpa, data.len()) else {
            return Ok(false);
        };
        self.dev.bar_write(bar, off, data)?;
        Ok(true)
    }
}

impl Drop for LocalAttach {
    fn drop(&mut self) {
        if let Some(fd) = self.msi.as_mut().and_then(|m| m.route.take()) {
            let _ = self.vm.unregister_irqfd(&fd, MSI_GSI);
            let _ = self.dev.disable_irqs(IrqIndex::Msi);
        }
        for b in &self.bars {
            if b.applied.is_none() {
                continue;
            }
            for (map, &slot) in b.maps.iter().zip(&b.slots) {
                let region = kvm_userspace_memory_region {
                    slot,
                    flags: 0,
                    guest_phys_addr: 0,
                    memory_size: 0,
                    userspace_addr: map.host as u64,
                };
                // SAFETY: size 0 deletes the slot before its mapping goes away.
                if let Err(e) = unsafe { self.vm.set_user_memory_region(region) } {
                    log::warn!("delete BAR slot {slot}: {e}");
                }
            }
        }
    }
}
