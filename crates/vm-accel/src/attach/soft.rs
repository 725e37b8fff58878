//! A software PCI function that implements [`DeviceBackend`]: config space in memory, BARs
//! backed by anonymous memory, interrupts as eventfds a test can fire.
//!
//! It lets a VMM author (and this crate's tests) run the whole attach path (config-space
//! emulation, memory slots, GSI routes, irqfds, a guest taking the interrupt) on any host
//! with /dev/kvm, without VFIO or an IOMMU. It is a stand-in, not an emulator: BAR memory is
//! plain RAM and the "device" does only what the test does through [`SoftDevice`].

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use vm_vfio::access::{page_size, Area, Error, IrqIndex, MmapAlign};
use vmm_sys_util::eventfd::EventFd;

use super::backend::{BackendResult, BarMap, BarRegion, DeviceBackend};
use super::lock;

/// One BAR of a [`SoftDevice`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SoftBar {
    /// Size in bytes (a power of two, at least 16).
    pub size: u64,
    /// 64-bit memory BAR (takes the next BAR register too).
    pub is_64bit: bool,
    /// Prefetchable memory.
    pub prefetchable: bool,
}

struct Anon {
    ptr: *mut u8,
    len: usize,
}
// SAFETY: anonymous memory owned by this struct; accesses are volatile or via KVM.
unsafe impl Send for Anon {}
// SAFETY: as above.
unsafe impl Sync for Anon {}
impl Drop for Anon {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in `Anon::new`.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}
impl Anon {
    fn new(len: u64) -> BackendResult<Arc<Anon>> {
        let len = usize::try_from(len.max(page_size()))
            .map_err(|_| soft_err("allocate BAR memory", "too large"))?;
        // SAFETY: a fresh private anonymous mapping; NORESERVE so a 64 GiB stand-in BAR costs
        // only the pages a test touches.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(Error::Os {
                device: "soft".into(),
                op: "mmap BAR memory".into(),
                source: std::io::Error::last_os_error(),
            });
        }
        Ok(Arc::new(Anon { ptr: p.cast(), len }))
    }
}

fn soft_err(op: &str, reason: &str) -> Error {
    Error::Invalid {
        device: "soft".into(),
        op: op.into(),
        reason: reason.into(),
    }
}

#[derive(Default)]
struct IrqState {
    /// Vector -> the eventfd the attach layer gave for it.
    fds: BTreeMap<u32, EventFd>,
    enabled: bool,
}

/// A software PCI function (see the module documentation).
pub struct SoftDevice {
    name: String,
    config: Mutex<Vec<u8>>,
    bars: [Option<(SoftBar, Arc<Anon>)>; 6],
    /// Per BAR: the parts that may be mmapped (default: the whole BAR).
    mmap_areas: [Option<Vec<Area>>; 6],
    irq_counts: BTreeMap<IrqIndex, u32>,
    irqs: Mutex<BTreeMap<IrqIndex, IrqState>>,
    intx_unmask: Mutex<Option<EventFd>>,
    config_writes: Mutex<Vec<(u64, Vec<u8>)>>,
    bar_accesses: Mutex<Vec<(u8, u64, usize, bool)>>,
    resets: Mutex<u32>,
    can_reset: bool,
}

impl std::fmt::Debug for SoftDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SoftDevice")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl SoftDevice {
    /// A function with this config space (at least 256 bytes; vm-pci's
    /// [`ConfigBuilder`](vm_pci::fixture::ConfigBuilder) writes one) and BARs. The BAR
    /// registers of `config` are filled in from `bars` (type and prefetch bits, address 0).
    pub fn new(name: &str, config: Vec<u8>, bars: &[(u8, SoftBar)]) -> BackendResult<SoftDevice> {
        if config.len() < 256 {
            return Err(soft_err("new", "config space shorter than 256 bytes"));
        }
        let mut config = config;
        config.resize(4096, 0);
        let mut slots: [Option<(SoftBar, Arc<Anon>)>; 6] = Default::default();
        for &(i, bar) in bars {
            let i = usize::from(i);
            if i > 5 || (bar.is_64bit && i > 4) || !bar.size.is_power_of_two() || bar.size < 16 {
                return Err(soft_err("new", &format!("bad BAR {i}: {bar:?}")));
            }
            let low: u32 =
                (if bar.is_64bit { 0b100 } else { 0 }) | if bar.prefetchable { 0b1000 } else { 0 };
            config[0x10 + 4 * i..0x14 + 4 * i].copy_from_slice(&low.to_le_bytes());
            slots[i] = Some((bar, Anon::new(bar.size)?));
        }
        Ok(SoftDevice {
            name: name.into(),
            config: Mutex::new(config),
            bars: slots,
            mmap_areas: Default::default(),
            irq_counts: BTreeMap::new(),
            irqs: Mutex::new(BTreeMap::new()),
            intx_unmask: Mutex::new(None),
            config_writes: Mutex::new(Vec::new()),
            bar_accesses: Mutex::new(Vec::new()),
            resets: Mutex::new(0),
            can_reset: true,
        })
    }

    /// Offers `count` vectors of `index`.
    pub fn with_irqs(mut self, index: IrqIndex, count: u32) -> Self {
        self.irq_counts.insert(index, count);
        self
    }

    /// Limits what of BAR `bar` may be mmapped (e.g. to leave the MSI-X table trapped).
    pub fn with_mmap_areas(mut self, bar: u8, areas: Vec<Area>) -> Self {
        if let Some(slot) = self.mmap_areas.get_mut(usize::from(bar)) {
            *slot = Some(areas);
        }
        self
    }

    /// A function without a reset method.
    pub fn without_reset(mut self) -> Self {
        self.can_reset = false;
        self
    }

    /// The device raises `vector` of `index`: signals the eventfd attach gave for it.
    /// Returns false when no eventfd is attached to that vector (the interrupt is lost, as
    /// on real hardware with the vector disabled).
    pub fn fire(&self, index: IrqIndex, vector: u32) -> bool {
        let irqs = lock(&self.irqs);
        match irqs.get(&index).and_then(|s| s.fds.get(&vector)) {
            Some(fd) => fd.write(1).is_ok(),
            None => false,
        }
    }

    /// Vectors of `index` that have an eventfd now.
    pub fn routed_vectors(&self, index: IrqIndex) -> Vec<u32> {
        lock(&self.irqs)
            .get(&index)
            .map(|s| s.fds.keys().copied().collect())
            .unwrap_or_default()
    }

    /// Whether `index` is enabled (eventfds set and not disabled since).
    pub fn irq_enabled(&self, index: IrqIndex) -> bool {
        lock(&self.irqs).get(&index).is_some_and(|s| s.enabled)
    }

    /// Every config write that reached the device, in order.
    pub fn config_writes(&self) -> Vec<(u64, Vec<u8>)> {
        lock(&self.config_writes).clone()
    }

    /// Every trapped BAR access (bar, offset, length, is_write), in order.
    pub fn bar_accesses(&self) -> Vec<(u8, u64, usize, bool)> {
        lock(&self.bar_accesses).clone()
    }

    /// How often the function was reset.
    pub fn resets(&self) -> u32 {
        *lock(&self.resets)
    }

    /// Host pointer to BAR memory (for a test to put register values in place).
    pub fn bar_host(&self, bar: u8) -> Option<*mut u8> {
        self.bars
            .get(usize::from(bar))?
            .as_ref()
            .map(|(_, m)| m.ptr)
    }

    /// The INTx unmask eventfd given by attach, if any.
    pub fn intx_unmask_fd(&self) -> Option<EventFd> {
        lock(&self.intx_unmask)
            .as_ref()
            .and_then(|f| f.try_clone().ok())
    }

    fn bar(&self, bar: u8) -> BackendResult<&(SoftBar, Arc<Anon>)> {
        self.bars
            .get(usize::from(bar))
            .and_then(|b| b.as_ref())
            .ok_or_else(|| soft_err("BAR access", &format!("no BAR {bar}")))
    }
}

fn check_range(off: u64, len: usize, size: u64, op: &str) -> BackendResult<usize> {
    let end = off.checked_add(len as u64).filter(|&e| e <= size);
    match end {
        Some(_) => usize::try_from(off).map_err(|_| soft_err(op, "offset")),
        None => Err(soft_err(op, &format!("{off:#x}+{len} beyond {size:#x}"))),
    }
}

impl DeviceBackend for SoftDevice {
    fn name(&self) -> String {
        self.name.clone()
    }
    fn config_read(&self, off: u64, buf: &mut [u8]) -> BackendResult<()> {
        let c = lock(&self.config);
        let at = check_range(off, buf.len(), c.len() as u64, "config read")?;
        buf.copy_from_slice(&c[at..at + buf.len()]);
        Ok(())
    }
    fn config_write(&self, off: u64, buf: &[u8]) -> BackendResult<()> {
        let mut c = lock(&self.config);
        let at = check_range(off, buf.len(), c.len() as u64, "config write")?;
        c[at..at + buf.len()].copy_from_slice(buf);
        lock(&self.config_writes).push((off, buf.to_vec()));
        Ok(())
    }
    fn bar_region(&self, bar: u8) -> Option<BarRegion> {
        let (b, _) = self.bars.get(usize::from(bar))?.as_ref()?;
        let areas = self.mmap_areas[usize::from(bar)]
            .clone()
            .unwrap_or_else(|| {
                vec![Area {
                    offset: 0,
                    size: b.size.max(page_size()),
                }]
            });
        Some(BarRegion {
            size: b.size,
            mmap_areas: areas,
        })
    }
    fn bar_read(&self, bar: u8, off: u64, buf: &mut [u8]) -> BackendResult<()> {
        let (b, m) = self.bar(bar)?;
        let at = check_range(off, buf.len(), b.size, "BAR read")?;
        for (i, byte) in buf.iter_mut().enumerate() {
            // SAFETY: in bounds (checked above); volatile like device memory.
            *byte = unsafe { std::ptr::read_volatile(m.ptr.add(at + i)) };
        }
        lock(&self.bar_accesses).push((bar, off, buf.len(), false));
        Ok(())
    }
    fn bar_write(&self, bar: u8, off: u64, buf: &[u8]) -> BackendResult<()> {
        let (b, m) = self.bar(bar)?;
        let at = check_range(off, buf.len(), b.size, "BAR write")?;
        for (i, byte) in buf.iter().enumerate() {
            // SAFETY: in bounds (checked above); volatile like device memory.
            unsafe { std::ptr::write_volatile(m.ptr.add(at + i), *byte) };
        }
        lock(&self.bar_accesses).push((bar, off, buf.len(), true));
        Ok(())
    }
    fn map_bar(&self, bar: u8, _align: MmapAlign) -> BackendResult<Vec<BarMap>> {
        let (_, m) = self.bar(bar)?;
        let region = self
            .bar_region(bar)
            .ok_or_else(|| soft_err("map BAR", "no region"))?;
        region
            .mmap_areas
            .iter()
            .map(|a| {
                let at = check_range(a.offset, a.size as usize, m.len as u64, "map BAR")?;
                Ok(BarMap {
                    offset: a.offset,
                    len: a.size,
                    // SAFETY: in bounds of the BAR memory (checked above).
                    host: unsafe { m.ptr.add(at) },
                    owner: Box::new(m.clone()),
                })
            })
            .collect()
    }
    fn irq_count(&self, index: IrqIndex) -> u32 {
        self.irq_counts.get(&index).copied().unwrap_or(0)
    }
    fn irq_resizable(&self, _index: IrqIndex) -> bool {
        true
    }
    fn set_irq_eventfds(
        &self,
        index: IrqIndex,
        start: u32,
        fds: &[Option<&EventFd>],
    ) -> BackendResult<()> {
        let count = self.irq_count(index);
        if start
            .checked_add(fds.len() as u32)
            .is_none_or(|e| e > count)
        {
            return Err(soft_err(
                "set irq eventfds",
                &format!(
                    "vectors {start}+{} beyond the {count} {index} vectors",
                    fds.len()
                ),
            ));
        }
        let mut irqs = lock(&self.irqs);
        let st = irqs.entry(index).or_default();
        st.enabled = true;
        for (i, fd) in fds.iter().enumerate() {
            let v = start + i as u32;
            match fd {
                Some(fd) => {
                    let dup = fd.try_clone().map_err(|e| Error::Os {
                        device: self.name.clone(),
                        op: "dup eventfd".into(),
                        source: e,
                    })?;
                    st.fds.insert(v, dup);
                }
                None => {
                    st.fds.remove(&v);
                }
            }
        }
        Ok(())
    }
    fn disable_irqs(&self, index: IrqIndex) -> BackendResult<()> {
        lock(&self.irqs).remove(&index);
        if index == IrqIndex::Intx {
            *lock(&self.intx_unmask) = None;
        }
        Ok(())
    }
    fn intx_unmask_on(&self, fd: &EventFd) -> BackendResult<()> {
        let dup = fd.try_clone().map_err(|e| Error::Os {
            device: self.name.clone(),
            op: "dup eventfd".into(),
            source: e,
        })?;
        *lock(&self.intx_unmask) = Some(dup);
        Ok(())
    }
    fn reset(&self) -> BackendResult<()> {
        if !self.can_reset {
            return Err(soft_err("reset", "the device offers no reset"));
        }
        *lock(&self.resets) += 1;
        Ok(())
    }
    fn can_reset(&self) -> bool {
        self.can_reset
    }
}
