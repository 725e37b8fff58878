//! A device's interrupts in the guest: MSI and MSI-X vectors as KVM GSI routes + irqfds,
//! the emulated MSI-X table and PBA, and INTx through a resampling irqfd.
//!
//! One eventfd per active vector is both VFIO's trigger and KVM's irqfd, so an unmasked
//! vector goes device -> KVM without the VMM. Masking deassigns the irqfd: the eventfd then
//! counts what the device raises, the PBA reads that count (poll without consuming), and
//! unmasking assigns the irqfd again, which makes KVM inject an eventfd that is already
//! signalled (`kvm_irqfd_assign` polls it once). Deassigning consumes the count
//! (`irqfd_shutdown` removes the wait-queue entry with `eventfd_ctx_remove_wait_queue`), so
//! what was delivered before a mask never reads as pending after it.
//!
//! GSIs are taken on a vector's first effective unmask with a programmed address and given
//! back when MSI/MSI-X is disabled or on [`Interrupts::teardown`]: a device with 2048
//! MSI-X entries costs only the routes of the vectors its driver uses.

use std::sync::Arc;

use vm_vfio::access::IrqIndex;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::backend::DeviceBackend;
use super::config::{ConfigEvent, MsiLayout, MsiState, MsixLayout};
use super::error::{Error, Result};
use super::routes::GsiRoutes;

/// What a device holds now (for leak tests and diagnostics).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct InterruptStats {
    /// GSIs (and their routes) taken from [`GsiRoutes`] for MSI/MSI-X vectors.
    pub gsis: usize,
    /// irqfds registered with KVM (MSI/MSI-X vectors and INTx).
    pub irqfds: usize,
    /// Vectors that have an eventfd in VFIO (MSI-X, MSI and INTx together).
    pub vfio_vectors: usize,
}

/// A vector's route: the GSI and the message it is set to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Route {
    gsi: u32,
    address: u64,
    data: u32,
}

/// An active MSI or MSI-X vector: its eventfd is in VFIO.
#[derive(Debug)]
struct Vector {
    /// VFIO's trigger and KVM's irqfd.
    fd: EventFd,
    /// Taken on the first unmask.
    route: Option<Route>,
    /// The irqfd is registered (the vector is delivered).
    armed: bool,
}

impl Vector {
    fn new(what: &str) -> Result<Vector> {
        let fd = EventFd::new(EFD_NONBLOCK).map_err(|e| Error::Allocate {
            device: "(vm)".into(),
            what: format!("an eventfd for {what}"),
            reason: e.to_string(),
        })?;
        Ok(Vector {
            fd,
            route: None,
            armed: false,
        })
    }

    /// Routes the vector to (address, data): a GSI on first use, the route set, KVM
    /// refusing leaves the vector as it was.
    fn route(&mut self, routes: &GsiRoutes, address: u64, data: u32) -> Result<u32> {
        match &mut self.route {
            Some(r) if r.address == address && r.data == data => Ok(r.gsi),
            Some(r) => {
                routes.set_msi(r.gsi, address, data)?;
                r.address = address;
                r.data = data;
                Ok(r.gsi)
            }
            None => {
                let gsi = routes.allocate()?;
                if let Err(e) = routes.set_msi(gsi, address, data) {
                    routes.free(gsi);
                    return Err(e);
                }
                self.route = Some(Route { gsi, address, data });
                Ok(gsi)
            }
        }
    }

    /// Registers the irqfd (after the route is set).
    fn arm(&mut self, routes: &GsiRoutes) -> Result<()> {
        let Some(r) = self.route else {
            return Ok(());
        };
        if !self.armed {
            routes
                .vm()
                .register_irqfd(&self.fd, r.gsi)
                .map_err(|e| Error::kvm(format!("KVM_IRQFD assign gsi {}", r.gsi), e))?;
            self.armed = true;
        }
        Ok(())
    }

    /// Deassigns the irqfd: from now on the eventfd counts (pending).
    fn disarm(&mut self, routes: &GsiRoutes) -> Result<()> {
        if let (true, Some(r)) = (self.armed, self.route) {
            self.armed = false;
            routes
                .vm()
                .unregister_irqfd(&self.fd, r.gsi)
                .map_err(|e| Error::kvm(format!("KVM_IRQFD deassign gsi {}", r.gsi), e))?;
        }
        Ok(())
    }

    /// Removes the route and frees the GSI (after [`Vector::disarm`]).
    fn unroute(&mut self, routes: &GsiRoutes) -> Result<()> {
        if let Some(r) = self.route.take() {
            let res = routes.remove(r.gsi);
            routes.free(r.gsi);
            res?;
        }
        Ok(())
    }

    /// The device raised the vector while it was not delivered.
    fn pending(&self) -> bool {
        !self.armed && readable(&self.fd)
    }
}

/// Whether `fd` has a count, without consuming it.
fn readable(fd: &EventFd) -> bool {
    use std::os::fd::AsRawFd;
    let mut p = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd for the duration of the call; timeout 0 never blocks.
    let n = unsafe { libc::poll(&mut p, 1, 0) };
    n > 0 && p.revents & libc::POLLIN != 0
}

/// One MSI-X table entry as the guest programmed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    /// Message address low, high, data, vector control (as the four table dwords).
    dwords: [u32; 4],
}

impl Entry {
    const MASKED: Entry = Entry {
        dwords: [0, 0, 0, 1],
    };
    fn address(&self) -> u64 {
        u64::from(self.dwords[1]) << 32 | u64::from(self.dwords[0])
    }
    fn data(&self) -> u32 {
        self.dwords[2]
    }
    fn masked(&self) -> bool {
        self.dwords[3] & 1 != 0
    }
}

#[derive(Debug)]
struct Msix {
    layout: MsixLayout,
    enabled: bool,
    function_mask: bool,
    table: Vec<Entry>,
    /// Per entry: the active vector (eventfd in VFIO), if it was ever unmasked since enable.
    vectors: Vec<Option<Vector>>,
    /// The MSI-X index is on in VFIO.
    vfio_on: bool,
}

#[derive(Debug)]
struct Msi {
    layout: MsiLayout,
    state: MsiState,
    /// One per enabled vector while MSI is on (all in VFIO: MSI cannot grow).
    vectors: Vec<Vector>,
}

#[derive(Debug)]
struct Intx {
    gsi: u32,
    trigger: EventFd,
    resample: EventFd,
    /// The resampling irqfd is registered.
    irqfd: bool,
    /// VFIO's INTx is on (off while MSI or MSI-X is: vfio-pci allows one index at a time).
    vfio: bool,
}

/// The interrupts of one attached device (see the module documentation).
pub struct Interrupts {
    dev: Arc<dyn DeviceBackend>,
    routes: Arc<GsiRoutes>,
    name: String,
    msix: Option<Msix>,
    msi: Option<Msi>,
    intx: Option<Intx>,
}

impl std::fmt::Debug for Interrupts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Interrupts")
            .field("device", &self.name)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl Interrupts {
    /// The interrupts of `dev`, with the MSI/MSI-X capabilities its config space has.
    /// Takes nothing from KVM or VFIO until the guest enables and unmasks vectors.
    pub fn new(
        dev: Arc<dyn DeviceBackend>,
        routes: Arc<GsiRoutes>,
        msi: Option<MsiLayout>,
        msix: Option<MsixLayout>,
    ) -> Result<Interrupts> {
        let name = dev.name();
        let msix = match msix {
            Some(l) if l.table_size == 0 || l.table_size > 2048 => {
                return Err(Error::invalid(
                    &name,
                    "MSI-X",
                    format!("table size {} outside 1..=2048", l.table_size),
                ));
            }
            Some(l) => Some(Msix {
                layout: l,
                enabled: false,
                function_mask: false,
                table: vec![Entry::MASKED; usize::from(l.table_size)],
                vectors: (0..l.table_size).map(|_| None).collect(),
                vfio_on: false,
            }),
            None => None,
        };
        let msi = match msi {
            Some(l) if !l.max_vectors.is_power_of_two() || l.max_vectors > 32 => {
                return Err(Error::invalid(
                    &name,
                    "MSI",
                    format!("{} vectors is not 1, 2, 4 ... 32", l.max_vectors),
                ));
            }
            Some(l) => Some(Msi {
                layout: l,
                state: MsiState::default(),
                vectors: Vec::new(),
            }),
            None => None,
        };
        Ok(Interrupts {
            dev,
            routes,
            name,
            msix,
            msi,
            intx: None,
        })
    }

    /// Acts on an MSI or MSI-X capability change (a BAR move is not ours: ignored).
    pub fn on_config_event(&mut self, ev: &ConfigEvent) -> Result<()> {
        match *ev {
            ConfigEvent::BarMove { .. } => Ok(()),
            ConfigEvent::Msix {
                enabled,
                function_mask,
            } => self.msix_control(enabled, function_mask),
            ConfigEvent::Msi(st) => self.msi_state(st),
        }
    }

    /// Reads the emulated MSI-X table (`off` from the table start, 4 or 8 bytes, naturally
    /// aligned). Anything else reads all-ones.
    pub fn msix_table_read(&self, off: u64, data: &mut [u8]) {
        let Some(x) = &self.msix else {
            data.fill(0xff);
            return;
        };
        let Some((entry, dword)) = table_slot(&x.layout, off, data.len()) else {
            log::debug!(
                "{}: MSI-X table read {off:#x}+{} ignored",
                self.name,
                data.len()
            );
            data.fill(0xff);
            return;
        };
        for (i, chunk) in data.chunks_mut(4).enumerate() {
            chunk.copy_from_slice(&x.table[entry].dwords[dword + i].to_le_bytes());
        }
    }

    /// Writes the emulated MSI-X table and applies what changed to the vector's route and
    /// irqfd (the device's own table is VFIO's to program).
    pub fn msix_table_write(&mut self, off: u64, data: &[u8]) -> Result<()> {
        let name = &self.name;
        let x = self
            .msix
            .as_mut()
            .ok_or_else(|| Error::invalid(name, "MSI-X table write", "no MSI-X capability"))?;
        let (entry, dword) = table_slot(&x.layout, off, data.len()).ok_or_else(|| {
            Error::invalid(
                name,
                "MSI-X table write",
                format!(
                    "{off:#x}+{} is not an aligned dword or qword of the {}-entry table",
                    data.len(),
                    x.layout.table_size
                ),
            )
        })?;
        let before = x.table[entry];
        for (i, chunk) in data.chunks(4).enumerate() {
            let mut v = [0; 4];
            v.copy_from_slice(chunk);
            let mut v = u32::from_le_bytes(v);
            if dword + i == 3 {
                // Only the mask bit of vector control is defined.
                v &= 1;
            }
            x.table[entry].dwords[dword + i] = v;
        }
        if x.table[entry] == before {
            return Ok(());
        }
        self.sync_msix(entry)
    }

    /// Reads the emulated pending-bit array (`off` from the PBA start, 4 or 8 bytes,
    /// naturally aligned): a bit is set for a vector the device raised while it was masked.
    pub fn pba_read(&self, off: u64, data: &mut [u8]) {
        data.fill(0);
        let Some(x) = &self.msix else {
            return;
        };
        let len = data.len() as u64;
        if !(len == 4 || len == 8)
            || !off.is_multiple_of(len)
            || off
                .checked_add(len)
                .is_none_or(|end| end > x.layout.pba_len())
        {
            log::debug!("{}: PBA read {off:#x}+{len} ignored", self.name);
            return;
        }
        for (bit, v) in (off * 8..(off + len) * 8).enumerate() {
            let pending = usize::try_from(v)
                .ok()
                .and_then(|v| x.vectors.get(v))
                .and_then(Option::as_ref)
                .is_some_and(Vector::pending);
            if pending {
                data[bit / 8] |= 1 << (bit % 8);
            }
        }
    }

    /// MSI pending bits (for the MSI capability's Pending Bits register): vector n's bit
    /// is set when it was raised while masked.
    pub fn msi_pending(&self) -> u32 {
        self.msi.as_ref().map_or(0, |m| {
            m.vectors
                .iter()
                .enumerate()
                .filter(|(_, v)| v.pending())
                .fold(0, |acc, (i, _)| acc | 1 << i)
        })
    }

    /// Delivers the device's INTx to the VMM's `gsi` (its route to the irqchip pin is the
    /// VMM's, set through [`GsiRoutes::set_irqchip`]): VFIO's INTx eventfd is a resampling
    /// irqfd, and KVM's resample eventfd (the guest's EOI) unmasks the line in VFIO. While
    /// MSI or MSI-X is on, INTx is off in VFIO (vfio-pci allows one index at a time) and comes
    /// back when they are disabled.
    pub fn enable_intx(&mut self, gsi: u32) -> Result<()> {
        if self.dev.irq_count(IrqIndex::Intx) == 0 {
            return Err(Error::invalid(
                &self.name,
                "enable INTx",
                "the device has no INTx pin",
            ));
        }
        if self.intx.as_ref().is_none_or(|i| i.gsi != gsi) {
            self.intx_off()?;
            self.intx = None;
            let trigger = Vector::new("INTx")?.fd;
            let resample = Vector::new("the INTx resample")?.fd;
            self.intx = Some(Intx {
                gsi,
                trigger,
                resample,
                irqfd: false,
                vfio: false,
            });
        }
        // Also finishes an earlier enable of the same GSI that failed half way.
        self.intx_back()
    }

    /// Releases everything, in the order that cannot inject into a freed route: irqfds, then
    /// routes (GSIs freed), then VFIO MSI-X/MSI/INTx off. Keeps going past a failure and
    /// returns the first one; a second call finds nothing to do.
    pub fn teardown(&mut self) -> Result<()> {
        let mut first = None;
        let mut keep = |r: Result<()>| {
            if let Err(e) = r {
                log::warn!("teardown: {e}");
                first.get_or_insert(e);
            }
        };
        let routes = &*self.routes;
        for v in all_vectors(&mut self.msix, &mut self.msi) {
            keep(v.disarm(routes));
        }
        keep(self.intx_irqfd_off());
        let routes = &*self.routes;
        for v in all_vectors(&mut self.msix, &mut self.msi) {
            keep(v.unroute(routes));
        }
        keep(self.msix_vfio_off());
        keep(self.msi_vfio_off());
        keep(self.intx_vfio_off());
        if let Some(x) = &mut self.msix {
            x.enabled = false;
        }
        if let Some(m) = &mut self.msi {
            m.state = MsiState::default();
        }
        self.intx = None;
        first.map_or(Ok(()), Err)
    }

    /// What the device holds now.
    pub fn stats(&self) -> InterruptStats {
        let vectors = self
            .msix
            .iter()
            .flat_map(|x| x.vectors.iter().flatten())
            .chain(self.msi.iter().flat_map(|m| m.vectors.iter()));
        let mut s = InterruptStats::default();
        for v in vectors {
            s.gsis += usize::from(v.route.is_some());
            s.irqfds += usize::from(v.armed);
            s.vfio_vectors += 1;
        }
        if let Some(i) = &self.intx {
            s.irqfds += usize::from(i.irqfd);
            s.vfio_vectors += usize::from(i.vfio);
        }
        s
    }

    /// The guest has MSI-X enabled (INTx must stay off, even before a vector is active).
    fn msix_on(&self) -> bool {
        self.msix.as_ref().is_some_and(|x| x.enabled || x.vfio_on)
    }

    fn msi_on(&self) -> bool {
        self.msi.as_ref().is_some_and(|m| !m.vectors.is_empty())
    }

    // ---- MSI-X ----

    fn msix_control(&mut self, enabled: bool, function_mask: bool) -> Result<()> {
        let name = &self.name;
        let x = self
            .msix
            .as_mut()
            .ok_or_else(|| Error::invalid(name, "MSI-X control", "no MSI-X capability"))?;
        let was = x.enabled;
        x.enabled = enabled;
        x.function_mask = function_mask;
        if !enabled {
            if was {
                self.msix_off()?;
                self.intx_back()?;
            }
            return Ok(());
        }
        if !was {
            // vfio-pci enables one interrupt index at a time.
            self.intx_off()?;
            if self.msi_on() {
                log::warn!("{}: MSI-X enabled while MSI is on; MSI off", self.name);
                self.msi_off()?;
                if let Some(m) = &mut self.msi {
                    m.state.enabled = false;
                }
            }
        }
        let n = self.msix.as_ref().map_or(0, |x| x.table.len());
        (0..n).try_for_each(|i| self.sync_msix(i))
    }

    /// Brings vector `i` to what the table and the control word say.
    fn sync_msix(&mut self, i: usize) -> Result<()> {
        let Some(x) = self.msix.as_mut() else {
            return Ok(());
        };
        if !x.enabled {
            return Ok(());
        }
        let e = x.table[i];
        let deliver = !x.function_mask && !e.masked() && e.address() != 0;
        let routes = &*self.routes;
        if !deliver {
            if let Some(v) = x.vectors[i].as_mut() {
                v.disarm(routes)?;
            }
            return Ok(());
        }
        if x.vectors[i].is_none() {
            let v = Vector::new(&format!("MSI-X vector {i}"))?;
            msix_vfio_add(&*self.dev, x, i, &v.fd)?;
            x.vectors[i] = Some(v);
        }
        if let Some(v) = x.vectors[i].as_mut() {
            v.route(routes, e.address(), e.data())?;
            v.arm(routes)?;
        }
        Ok(())
    }

    fn msix_off(&mut self) -> Result<()> {
        let routes = &*self.routes;
        if let Some(x) = &mut self.msix {
            for v in x.vectors.iter_mut().flatten() {
                v.disarm(routes)?;
            }
            for v in x.vectors.iter_mut().flatten() {
                v.unroute(routes)?;
            }
        }
        self.msix_vfio_off()
    }

    fn msix_vfio_off(&mut self) -> Result<()> {
        let Some(x) = &mut self.msix else {
            return Ok(());
        };
        if x.vfio_on {
            self.dev.disable_irqs(IrqIndex::Msix)?;
            x.vfio_on = false;
        }
        x.vectors.iter_mut().for_each(|v| *v = None);
        Ok(())
    }

    // ---- MSI ----

    fn msi_state(&mut self, st: MsiState) -> Result<()> {
        let name = self.name.clone();
        let Some(m) = self.msi.as_ref() else {
            return Err(Error::invalid(&name, "MSI", "no MSI capability"));
        };
        if !st.enabled {
            let was = self.msi_on();
            if let Some(m) = &mut self.msi {
                m.state = st;
            }
            if was {
                self.msi_off()?;
                self.intx_back()?;
            }
            return Ok(());
        }
        let n = st.vectors.max(1);
        let limit = m.layout.max_vectors.min(self.dev.irq_count(IrqIndex::Msi));
        if !n.is_power_of_two() || n > limit {
            return Err(Error::invalid(
                &name,
                "MSI enable",
                format!("{n} vectors; the device offers {limit}"),
            ));
        }
        if self.msi_on() && m.vectors.len() != n as usize {
            // VFIO fixes the MSI vector count at enable.
            self.msi_off()?;
        }
        if !self.msi_on() {
            self.intx_off()?;
            if self.msix_on() {
                log::warn!("{name}: MSI enabled while MSI-X is on; MSI-X off");
                self.msix_off()?;
                if let Some(x) = &mut self.msix {
                    x.enabled = false;
                }
            }
            let vectors = (0..n)
                .map(|i| Vector::new(&format!("MSI vector {i}")))
                .collect::<Result<Vec<_>>>()?;
            let fds: Vec<Option<&EventFd>> = vectors.iter().map(|v| Some(&v.fd)).collect();
            self.dev.set_irq_eventfds(IrqIndex::Msi, 0, &fds)?;
            if let Some(m) = &mut self.msi {
                m.vectors = vectors;
            }
        }
        let routes = &*self.routes;
        let Some(m) = &mut self.msi else {
            return Ok(());
        };
        m.state = st;
        let per_vector = m.layout.per_vector_mask;
        for (i, v) in (0u32..).zip(m.vectors.iter_mut()) {
            let masked = per_vector && st.mask & (1 << i) != 0;
            if masked || st.address == 0 {
                v.disarm(routes)?;
                continue;
            }
            // The device puts the vector number in the low bits the guest left to it.
            let data = u32::from(st.data) & !(n - 1) | i;
            v.route(routes, st.address, data)?;
            v.arm(routes)?;
        }
        Ok(())
    }

    fn msi_off(&mut self) -> Result<()> {
        let routes = &*self.routes;
        if let Some(m) = &mut self.msi {
            for v in m.vectors.iter_mut() {
                v.disarm(routes)?;
            }
            for v in m.vectors.iter_mut() {
                v.unroute(routes)?;
            }
        }
        self.msi_vfio_off()
    }

    fn msi_vfio_off(&mut self) -> Result<()> {
        let Some(m) = &mut self.msi else {
            return Ok(());
        };
        if !m.vectors.is_empty() {
            self.dev.disable_irqs(IrqIndex::Msi)?;
            m.vectors.clear();
        }
        Ok(())
    }

    // ---- INTx ----

    fn intx_on(&mut self) -> Result<()> {
        let Some(i) = &mut self.intx else {
            return Ok(());
        };
        if !i.vfio {
            self.dev
                .set_irq_eventfds(IrqIndex::Intx, 0, &[Some(&i.trigger)])?;
            i.vfio = true;
            self.dev.intx_unmask_on(&i.resample)?;
        }
        if !i.irqfd {
            self.routes
                .vm()
                .register_irqfd_with_resample(&i.trigger, &i.resample, i.gsi)
                .map_err(|e| {
                    Error::kvm(
                        format!("KVM_IRQFD assign gsi {} with resample (INTx)", i.gsi),
                        e,
                    )
                })?;
            i.irqfd = true;
        }
        Ok(())
    }

    /// INTx back on after MSI/MSI-X went off (when the VMM enabled it).
    fn intx_back(&mut self) -> Result<()> {
        if !self.msi_on() && !self.msix_on() {
            self.intx_on()?;
        }
        Ok(())
    }

    fn intx_off(&mut self) -> Result<()> {
        self.intx_irqfd_off()?;
        self.intx_vfio_off()
    }

    fn intx_irqfd_off(&mut self) -> Result<()> {
        let Some(i) = &mut self.intx else {
            return Ok(());
        };
        if i.irqfd {
            // Marked off first: the VFIO side must still be turned off if this fails.
            i.irqfd = false;
            self.routes
                .vm()
                .unregister_irqfd(&i.trigger, i.gsi)
                .map_err(|e| Error::kvm(format!("KVM_IRQFD deassign gsi {} (INTx)", i.gsi), e))?;
        }
        Ok(())
    }

    fn intx_vfio_off(&mut self) -> Result<()> {
        if let Some(i) = &mut self.intx {
            if i.vfio {
                i.vfio = false;
                self.dev.disable_irqs(IrqIndex::Intx)?;
            }
        }
        Ok(())
    }
}

/// Every active MSI-X and MSI vector.
fn all_vectors<'a>(
    msix: &'a mut Option<Msix>,
    msi: &'a mut Option<Msi>,
) -> impl Iterator<Item = &'a mut Vector> {
    msix.iter_mut()
        .flat_map(|x| x.vectors.iter_mut().flatten())
        .chain(msi.iter_mut().flat_map(|m| m.vectors.iter_mut()))
}

/// Gives VFIO the eventfd of MSI-X vector `i`: one vector at a time when the index can
/// grow, else every vector at once on the first (with only `i`'s eventfd attached).
fn msix_vfio_add(dev: &dyn DeviceBackend, x: &mut Msix, i: usize, fd: &EventFd) -> Result<()> {
    let count = dev.irq_count(IrqIndex::Msix);
    let v = u32::try_from(i).unwrap_or(u32::MAX);
    if v >= count {
        return Err(Error::invalid(
            dev.name(),
            "MSI-X vector",
            format!("vector {i} beyond the {count} VFIO offers"),
        ));
    }
    if x.vfio_on || dev.irq_resizable(IrqIndex::Msix) {
        dev.set_irq_eventfds(IrqIndex::Msix, v, &[Some(fd)])?;
    } else {
        let n = count.min(u32::from(x.layout.table_size)) as usize;
        let mut fds: Vec<Option<&EventFd>> = vec![None; n];
        fds[i] = Some(fd);
        dev.set_irq_eventfds(IrqIndex::Msix, 0, &fds)?;
    }
    x.vfio_on = true;
    Ok(())
}

/// (entry, first dword) of an aligned 4- or 8-byte table access inside the table.
fn table_slot(l: &MsixLayout, off: u64, len: usize) -> Option<(usize, usize)> {
    let len = len as u64;
    if !(len == 4 || len == 8) || !off.is_multiple_of(len) || off.checked_add(len)? > l.table_len()
    {
        return None;
    }
    Some(((off / 16) as usize, ((off % 16) / 4) as usize))
}

impl Drop for Interrupts {
    fn drop(&mut self) {
        if let Err(e) = self.teardown() {
            log::warn!("{}: interrupt teardown on drop: {e}", self.name);
        }
    }
}
