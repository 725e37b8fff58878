//! BARs in the guest: the mmapped parts of a BAR become KVM memory slots at the BAR's guest
//! address (the guest reaches the device without exits); what is not mmapped (the MSI-X
//! table and PBA pages, BARs vfio-pci will not mmap) traps to the VMM. Moving a BAR moves
//! its slots.

use kvm_bindings::kvm_userspace_memory_region;

use super::backend::BarMap;
use super::error::{Error, Result};
use super::vm::AttachVm;

/// One live KVM memory slot of a BAR.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot {
    /// KVM slot id.
    pub id: u32,
    /// Guest physical address.
    pub gpa: u64,
    /// Length in bytes.
    pub len: u64,
    /// Offset inside the BAR.
    pub bar_offset: u64,
}

/// A BAR placed in the guest.
#[derive(Debug)]
pub(crate) struct GuestBarSlots {
    pub(crate) bar: u8,
    pub(crate) size: u64,
    /// The address the BAR is served at.
    pub(crate) gpa: u64,
    maps: Vec<BarMap>,
    slots: Vec<Slot>,
}

fn set_region(vm: &AttachVm, slot: u32, gpa: u64, len: u64, host: u64) -> Result<()> {
    let region = kvm_userspace_memory_region {
        slot,
        flags: 0,
        guest_phys_addr: gpa,
        memory_size: len,
        userspace_addr: host,
    };
    // SAFETY: `host..host+len` is a live BAR mmap owned by the `GuestBarSlots` that
    // registers it, and every slot is removed (len 0) before that mmap is dropped.
    unsafe { vm.vm().set_user_memory_region(region) }.map_err(|e| {
        Error::kvm(
            format!("KVM_SET_USER_MEMORY_REGION slot {slot} GPA {gpa:#x} + {len:#x}"),
            e,
        )
    })
}

impl GuestBarSlots {
    pub(crate) fn new(bar: u8, size: u64, maps: Vec<BarMap>) -> GuestBarSlots {
        GuestBarSlots {
            bar,
            size,
            gpa: 0,
            maps,
            slots: Vec::new(),
        }
    }

    /// The live slots.
    pub(crate) fn slots(&self) -> &[Slot] {
        &self.slots
    }

    /// Registers one slot per mmapped part at `gpa`; on failure the ones made are removed.
    pub(crate) fn map_at(&mut self, vm: &AttachVm, device: &str, gpa: u64) -> Result<()> {
        debug_assert!(self.slots.is_empty());
        for m in &self.maps {
            let id = vm.resources().allocate_slot(device)?;
            let at = gpa + m.offset;
            if let Err(e) = set_region(vm, id, at, m.len, m.host as u64) {
                vm.resources().free_slot(id);
                let undo = self.unmap(vm);
                if let Err(u) = undo {
                    log::error!("{device}: BAR{}: undoing a partial map: {u}", self.bar);
                }
                return Err(e);
            }
            self.slots.push(Slot {
                id,
                gpa: at,
                len: m.len,
                bar_offset: m.offset,
            });
        }
        self.gpa = gpa;
        Ok(())
    }

    /// Removes every slot (the mmaps stay, for a later `map_at`).
    pub(crate) fn unmap(&mut self, vm: &AttachVm) -> Result<()> {
        let mut first = None;
        while let Some(s) = self.slots.pop() {
            match set_region(vm, s.id, s.gpa, 0, 0) {
                Ok(()) => vm.resources().free_slot(s.id),
                // The slot may still be live: its id stays allocated so nothing reuses it.
                Err(e) => {
                    first.get_or_insert(e);
                }
            }
        }
        first.map_or(Ok(()), Err)
    }

    /// Serves the BAR at `to` instead: slots removed and re-added there. If that fails,
    /// the BAR is put back where it was and the error returned.
    pub(crate) fn move_to(&mut self, vm: &AttachVm, device: &str, to: u64) -> Result<()> {
        let from = self.gpa;
        if from == to {
            return Ok(());
        }
        self.unmap(vm)?;
        match self.map_at(vm, device, to) {
            Ok(()) => {
                log::debug!("{device}: BAR{} moved {from:#x} -> {to:#x}", self.bar);
                Ok(())
            }
            Err(e) => {
                if let Err(back) = self.map_at(vm, device, from) {
                    log::error!(
                        "{device}: BAR{} could not be put back at {from:#x}: {back}",
                        self.bar
                    );
                }
                Err(e)
            }
        }
    }

    /// Drops the mmaps (after `unmap`).
    pub(crate) fn release(mut self, vm: &AttachVm) -> Result<()> {
        let r = self.unmap(vm);
        if r.is_ok() {
            self.maps.clear();
        } else {
            // A slot may still point at the mapping: leak it rather than let KVM reach
            // unmapped memory.
            std::mem::forget(std::mem::take(&mut self.maps));
        }
        r
    }
}
