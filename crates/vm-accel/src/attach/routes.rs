//! The VM-wide KVM GSI routing table.
//!
//! `KVM_SET_GSI_ROUTING` replaces the whole table on every call, so two writers would erase
//! each other's routes: [`GsiRoutes`] is the one writer for its VM. It keeps the table, hands
//! out GSIs from a range with vm-allocator's [`IdAllocator`], and rewrites the table after
//! every change. A change KVM refuses is undone, so the kept table always equals KVM's.
//!
//! `KVM_CREATE_IRQCHIP` installs default routes (GSI 0-23 to the IOAPIC pins, 0-15 to the
//! PIC pins too) that the first table written here replaces: a VMM that uses those GSIs
//! (INTx, legacy devices) sets them through [`GsiRoutes::set_irqchip`].

use std::collections::BTreeMap;
use std::ops::RangeInclusive;
use std::sync::{Arc, Mutex, MutexGuard};

use kvm_bindings::{
    kvm_irq_routing_entry, KvmIrqRouting, KVM_IRQ_ROUTING_IRQCHIP, KVM_IRQ_ROUTING_MSI,
};
use kvm_ioctls::VmFd;
use vm_allocator::IdAllocator;

use super::error::{Error, Result};

/// KVM's limit on routing entries per VM (`KVM_MAX_IRQ_ROUTES`).
pub const MAX_ROUTES: usize = 4096;

/// Where a GSI goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    /// An MSI message.
    Msi { address: u64, data: u32 },
    /// A pin of an in-kernel interrupt controller.
    Irqchip { irqchip: u32, pin: u32 },
}

impl Route {
    fn entry(self, gsi: u32) -> kvm_irq_routing_entry {
        let mut e = kvm_irq_routing_entry {
            gsi,
            ..Default::default()
        };
        match self {
            Route::Msi { address, data } => {
                e.type_ = KVM_IRQ_ROUTING_MSI;
                e.u.msi.address_lo = address as u32;
                e.u.msi.address_hi = (address >> 32) as u32;
                e.u.msi.data = data;
            }
            Route::Irqchip { irqchip, pin } => {
                e.type_ = KVM_IRQ_ROUTING_IRQCHIP;
                e.u.irqchip.irqchip = irqchip;
                e.u.irqchip.pin = pin;
            }
        }
        e
    }
}

struct Table {
    ids: IdAllocator,
    /// GSI -> its entries (a legacy GSI may reach both the PIC and the IOAPIC).
    routes: BTreeMap<u32, Vec<Route>>,
}

/// The VM-wide KVM GSI routing table and its GSI allocator (see the module documentation).
pub struct GsiRoutes {
    vm: Arc<VmFd>,
    gsis: RangeInclusive<u32>,
    table: Mutex<Table>,
}

impl std::fmt::Debug for GsiRoutes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GsiRoutes")
            .field("gsis", &self.gsis)
            .field("routes", &self.len())
            .finish_non_exhaustive()
    }
}

impl GsiRoutes {
    /// The routing table of `vm`, allocating GSIs from `gsis` (on x86 usually 24..=4095,
    /// above the IOAPIC pins). Writes nothing to KVM until the first route is set.
    pub fn new(vm: Arc<VmFd>, gsis: RangeInclusive<u32>) -> Result<Arc<GsiRoutes>> {
        let ids = IdAllocator::new(*gsis.start(), *gsis.end()).map_err(|e| Error::Allocate {
            device: "(vm)".into(),
            what: format!("GSI range {}..={}", gsis.start(), gsis.end()),
            reason: e.to_string(),
        })?;
        Ok(Arc::new(GsiRoutes {
            vm,
            gsis,
            table: Mutex::new(Table {
                ids,
                routes: BTreeMap::new(),
            }),
        }))
    }

    /// A free GSI from the range given to [`GsiRoutes::new`] (no route yet).
    pub fn allocate(&self) -> Result<u32> {
        self.lock().ids.allocate_id().map_err(|e| Error::Allocate {
            device: "(vm)".into(),
            what: format!("a GSI in {}..={}", self.gsis.start(), self.gsis.end()),
            reason: e.to_string(),
        })
    }

    /// Gives `gsi` back to the allocator (its route, if any, stays: remove it first).
    pub fn free(&self, gsi: u32) {
        if let Err(e) = self.lock().ids.free_id(gsi) {
            log::warn!("GSI {gsi}: not freed: {e}");
        }
    }

    /// Routes `gsi` to an MSI message (replacing what it had). A GSI inside the range given
    /// to [`GsiRoutes::new`] must come from [`GsiRoutes::allocate`]; one outside it is the
    /// VMM's to manage.
    pub fn set_msi(&self, gsi: u32, address: u64, data: u32) -> Result<()> {
        self.update(gsi, |entries| {
            *entries = vec![Route::Msi { address, data }];
        })
    }

    /// Routes `gsi` to pin `pin` of in-kernel irqchip `irqchip` (`KVM_IRQCHIP_PIC_MASTER`,
    /// `_PIC_SLAVE`, `_IOAPIC`), next to its route to another irqchip if it has one.
    pub fn set_irqchip(&self, gsi: u32, irqchip: u32, pin: u32) -> Result<()> {
        self.update(gsi, |entries| {
            // An MSI entry goes; so does this irqchip's old pin. The other irqchip's stays.
            entries.retain(|r| matches!(r, Route::Irqchip { irqchip: c, .. } if *c != irqchip));
            entries.push(Route::Irqchip { irqchip, pin });
        })
    }

    /// Removes every route of `gsi` (nothing to do when it has none).
    pub fn remove(&self, gsi: u32) -> Result<()> {
        let mut t = self.lock();
        let Some(old) = t.routes.remove(&gsi) else {
            return Ok(());
        };
        self.write(&t).inspect_err(|_| {
            t.routes.insert(gsi, old);
        })
    }

    /// The VM the routes belong to (for registering irqfds).
    pub fn vm(&self) -> &Arc<VmFd> {
        &self.vm
    }

    /// Routing entries in the table.
    pub fn len(&self) -> usize {
        self.lock().routes.values().map(Vec::len).sum()
    }

    /// Whether the table has no entries.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Changes the entries of `gsi` and writes the table; undoes the change when KVM refuses.
    fn update(&self, gsi: u32, change: impl FnOnce(&mut Vec<Route>)) -> Result<()> {
        let mut t = self.lock();
        // A GSI of the allocator's range is only routed once handed out: otherwise a later
        // allocate() would give a device the VMM's route.
        if self.gsis.contains(&gsi) && !t.ids.is_allocated(gsi) {
            return Err(Error::invalid(
                "(vm)",
                format!("route GSI {gsi}"),
                format!(
                    "in the allocated range {}..={} but not allocated",
                    self.gsis.start(),
                    self.gsis.end()
                ),
            ));
        }
        let old = t.routes.get(&gsi).cloned();
        let mut entries = old.clone().unwrap_or_default();
        change(&mut entries);
        if old.as_ref() == Some(&entries) {
            return Ok(());
        }
        t.routes.insert(gsi, entries);
        self.write(&t).inspect_err(|_| match old {
            Some(old) => {
                t.routes.insert(gsi, old);
            }
            None => {
                t.routes.remove(&gsi);
            }
        })
    }

    fn write(&self, t: &Table) -> Result<()> {
        let n: usize = t.routes.values().map(Vec::len).sum();
        if n > MAX_ROUTES {
            return Err(Error::Allocate {
                device: "(vm)".into(),
                what: format!("{n} GSI routes"),
                reason: format!("KVM allows {MAX_ROUTES}"),
            });
        }
        let mut table = KvmIrqRouting::new(n).map_err(|e| Error::Allocate {
            device: "(vm)".into(),
            what: format!("{n} GSI routes"),
            reason: format!("{e:?}"),
        })?;
        let entries = t
            .routes
            .iter()
            .flat_map(|(&gsi, rs)| rs.iter().map(move |r| r.entry(gsi)));
        for (slot, e) in table.as_mut_slice().iter_mut().zip(entries) {
            *slot = e;
        }
        self.vm
            .set_gsi_routing(&table)
            .map_err(|e| Error::kvm(format!("KVM_SET_GSI_ROUTING ({n} routes)"), e))
    }

    fn lock(&self) -> MutexGuard<'_, Table> {
        super::lock(&self.table)
    }
}
