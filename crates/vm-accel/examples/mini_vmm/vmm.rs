//! The VMM: a KVM VM with an in-kernel irqchip, guest RAM from vm-memory, one vCPU
//! started in 64-bit mode, PCI configuration mechanism #1 with a host bridge at 00:00.0 and
//! the passed-through function at 00:01.0, and the exit loop that dispatches port and MMIO
//! exits.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Once};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use kvm_bindings::{kvm_segment, kvm_userspace_memory_region, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::{Kvm, VcpuExit, VcpuFd, VmFd};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

use vm_accel::attach::{AttachVm, AttachedDevice, VmLayout};

use crate::guest::Program;

/// The passed-through function as the exit handlers see it: the four calls of
/// [`AttachedDevice`] (a VMM with several device kinds puts them behind such a trait).
pub trait PciFunction {
    /// Config space read (1, 2 or 4 bytes); errors read as all-ones.
    fn config_read(&self, off: u16, data: &mut [u8]);
    fn config_write(&mut self, off: u16, data: &[u8]) -> Result<()>;
    /// `Ok(false)`: `gpa` is not in one of the device's BARs.
    fn mmio_read(&self, gpa: u64, data: &mut [u8]) -> Result<bool>;
    fn mmio_write(&mut self, gpa: u64, data: &[u8]) -> Result<bool>;
}

impl PciFunction for AttachedDevice {
    fn config_read(&self, off: u16, data: &mut [u8]) {
        AttachedDevice::config_read(self, off, data)
    }
    fn config_write(&mut self, off: u16, data: &[u8]) -> Result<()> {
        Ok(AttachedDevice::config_write(self, off, data)?)
    }
    fn mmio_read(&self, gpa: u64, data: &mut [u8]) -> Result<bool> {
        Ok(AttachedDevice::mmio_read(self, gpa, data)?)
    }
    fn mmio_write(&mut self, gpa: u64, data: &[u8]) -> Result<bool> {
        Ok(AttachedDevice::mmio_write(self, gpa, data)?)
    }
}

/// Guest physical layout.
pub mod layout {
    pub const RAM_SIZE: u64 = 4 << 20;
    pub const GDT: u64 = 0x1000;
    pub const IDT: u64 = 0x2000;
    pub const PML4: u64 = 0x3000;
    pub const PDPT: u64 = 0x4000;
    /// Variables the interrupt handlers and the program share.
    pub const IRQ_COUNT: u64 = 0x6000;
    pub const IRQ_STATUS: u64 = 0x6004;
    pub const BAR_BASE_SLOT: u64 = 0x6008;
    pub const MSIX_COUNT: u64 = 0x6100;
    pub const CODE: u64 = 0x10000;
    pub const STACK_TOP: u64 = 0x80000;
    /// edu DMA buffers (IOVA = GPA; edu only reaches the low 256 MiB).
    pub const DMA_SRC: u64 = 0x10_0000;
    pub const DMA_DST: u64 = 0x10_1000;
    /// Page directories (2 MiB pages), one per GiB of [`IDENTITY_MAPPED`].
    pub const PDS: u64 = 0x20_0000;
    pub const LAPIC: u64 = 0xFEE0_0000;
    /// 2 MiB pages identity-map this much: RAM, the 32-bit MMIO hole, a 64 GiB BAR at
    /// 64 GiB. (2 MiB rather than 1 GiB pages: not every KVM offers pdpe1gb, e.g. a
    /// nested one without it.)
    pub const IDENTITY_MAPPED: u64 = 128 << 30;
}

/// I/O ports.
pub mod port {
    pub const CONFIG_ADDRESS: u16 = 0xCF8;
    pub const CONFIG_DATA: u16 = 0xCFC;
    /// report: key, then value low and high halves (the high write commits).
    pub const KEY: u16 = 0x500;
    pub const VALUE_LO: u16 = 0x504;
    pub const VALUE_HI: u16 = 0x508;
    /// The guest asks the host side to act (see `guest::action`).
    pub const HOST: u16 = 0x50C;
    /// The program ends: status 0 is success.
    pub const DONE: u16 = 0x510;
}

/// Memory slot of guest RAM; attach takes BAR slots from [`attach_layout`]'s range.
pub const RAM_SLOT: u32 = 0;

/// Where attach places BARs before the guest moves them, and the GSIs and memory slots it
/// may use. The 64-bit window is where the guest puts large BARs too (64 GiB, inside the
/// identity map); the guest moves small BARs to [`crate::guest::LOW_BAR_BASE`].
pub fn attach_layout() -> VmLayout {
    VmLayout {
        mmio32: 0xC000_0000..=0xDFFF_FFFF,
        mmio64: (64 << 30)..=(layout::IDENTITY_MAPPED - 1),
        ..VmLayout::default()
    }
}

/// What the guest reported.
#[derive(Debug, Default, Clone)]
pub struct Report {
    pub values: Vec<(u32, u64)>,
    pub status: Option<u32>,
    /// Every MMIO exit, as (address, is_write): the guest accesses that did not go through a
    /// memory slot (nor to the in-kernel LAPIC).
    pub mmio_exits: Vec<(u64, bool)>,
}

impl Report {
    /// The last value reported under `key`.
    pub fn get(&self, key: u32) -> Option<u64> {
        self.values
            .iter()
            .rev()
            .find(|(k, _)| *k == key)
            .map(|&(_, v)| v)
    }
}

/// A one-vCPU VM.
#[derive(Debug)]
pub struct Vm {
    _kvm: Kvm,
    pub fd: Arc<VmFd>,
    pub mem: GuestMemoryMmap,
    vcpu: VcpuFd,
}

fn seg(selector: u16, code: bool) -> kvm_segment {
    kvm_segment {
        base: 0,
        limit: 0xffff_ffff,
        selector,
        type_: if code { 0xb } else { 0x3 },
        present: 1,
        dpl: 0,
        db: u8::from(!code),
        s: 1,
        l: u8::from(code),
        g: 1,
        ..Default::default()
    }
}

impl Vm {
    /// Creates the VM, its irqchip, RAM, page tables and GDT, and the vCPU in long mode.
    pub fn new() -> Result<Vm> {
        let kvm = Kvm::new().context("open /dev/kvm")?;
        let fd = Arc::new(kvm.create_vm().context("KVM_CREATE_VM")?);
        fd.create_irq_chip().context("KVM_CREATE_IRQCHIP")?;
        let mem =
            GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), layout::RAM_SIZE as usize)])
                .context("allocate guest RAM")?;
        let host = mem
            .get_host_address(GuestAddress(0))
            .context("guest RAM host address")?;
        let slot = kvm_userspace_memory_region {
            slot: RAM_SLOT,
            flags: 0,
            guest_phys_addr: 0,
            memory_size: layout::RAM_SIZE,
            userspace_addr: host as u64,
        };
        // SAFETY: `host` is the start of `mem`'s mapping, which lives as long as the VM.
        unsafe { fd.set_user_memory_region(slot) }.context("KVM_SET_USER_MEMORY_REGION (RAM)")?;

        // 64-bit GDT: null, code (0x8), data (0x10). Identity map with 2 MiB pages.
        mem.write_obj(0u64, GuestAddress(layout::GDT))?;
        mem.write_obj(0x00af_9a00_0000_ffffu64, GuestAddress(layout::GDT + 8))?;
        mem.write_obj(0x00cf_9200_0000_ffffu64, GuestAddress(layout::GDT + 16))?;
        mem.write_obj(layout::PDPT | 3, GuestAddress(layout::PML4))?;
        for gib in 0..layout::IDENTITY_MAPPED >> 30 {
            let pd = layout::PDS + gib * 0x1000;
            mem.write_obj(pd | 3, GuestAddress(layout::PDPT + 8 * gib))?;
            for i in 0..512u64 {
                // present | writable | 2 MiB page
                let page = (gib << 30) | (i << 21) | 0x83;
                mem.write_obj(page, GuestAddress(pd + 8 * i))?;
            }
        }

        let vcpu = fd.create_vcpu(0).context("KVM_CREATE_VCPU")?;
        let cpuid = kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .context("KVM_GET_SUPPORTED_CPUID")?;
        vcpu.set_cpuid2(&cpuid).context("KVM_SET_CPUID2")?;
        let mut sregs = vcpu.get_sregs().context("KVM_GET_SREGS")?;
        sregs.cs = seg(0x8, true);
        let data = seg(0x10, false);
        (sregs.ds, sregs.es, sregs.fs, sregs.gs, sregs.ss) = (data, data, data, data, data);
        sregs.gdt.base = layout::GDT;
        sregs.gdt.limit = 23;
        sregs.idt.base = layout::IDT;
        sregs.idt.limit = 16 * 256 - 1;
        sregs.cr3 = layout::PML4;
        sregs.cr4 = 1 << 5; // PAE
        sregs.cr0 = 0x8000_0033; // PG | NE | ET | MP | PE
        sregs.efer = 0x500; // LME | LMA
        vcpu.set_sregs(&sregs).context("KVM_SET_SREGS")?;
        Ok(Vm {
            _kvm: kvm,
            fd,
            mem,
            vcpu,
        })
    }

    /// The attach side of this VM (its KVM VFIO device, GSI routes, BAR windows, guest RAM
    /// for DMA). Create it once, after the irqchip and the RAM slot.
    pub fn attach_vm(&self) -> Result<Arc<AttachVm>> {
        Ok(AttachVm::new(
            Arc::clone(&self.fd),
            &self.mem,
            attach_layout(),
        )?)
    }

    /// Copies the program in and installs its IDT gates.
    pub fn load(&mut self, p: &Program) -> Result<()> {
        self.mem
            .write_slice(&p.code, GuestAddress(layout::CODE))
            .context("write the guest program")?;
        for &(vector, handler) in &p.gates {
            let lo =
                (handler & 0xffff) | (0x8 << 16) | (0x8e << 40) | ((handler >> 16) & 0xffff) << 48;
            let at = layout::IDT + 16 * u64::from(vector);
            self.mem.write_obj(lo, GuestAddress(at))?;
            self.mem.write_obj(handler >> 32, GuestAddress(at + 8))?;
        }
        let mut regs = self.vcpu.get_regs().context("KVM_GET_REGS")?;
        regs.rip = layout::CODE;
        regs.rsp = layout::STACK_TOP;
        regs.rflags = 2;
        self.vcpu.set_regs(&regs).context("KVM_SET_REGS")?;
        Ok(())
    }

    /// Runs the vCPU until the program reports done, with `dev` at 00:01.0. `host` acts on
    /// the guest's requests (e.g. fire an MSI-X vector). Fails after `timeout` with what
    /// the guest reported so far.
    pub fn run<D: PciFunction>(
        &mut self,
        dev: &mut D,
        host: &mut dyn FnMut(&mut D, u32) -> Result<()>,
        timeout: Duration,
    ) -> Result<Report> {
        let watchdog = Watchdog::start(timeout);
        let mut report = Report::default();
        let mut cf8 = 0u32;
        let mut key = 0u32;
        let mut lo = 0u32;
        loop {
            if watchdog.expired() {
                bail!("the guest did not finish within {timeout:?}; it reported {report:x?}");
            }
            let exit = match self.vcpu.run() {
                Ok(e) => e,
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => continue,
                Err(e) => bail!("KVM_RUN: {e}; the guest reported {report:x?}"),
            };
            match exit {
                VcpuExit::IoOut(p, data) => {
                    let v = le(data) as u32;
                    match p {
                        port::CONFIG_ADDRESS if data.len() == 4 => cf8 = v,
                        port::KEY => key = v,
                        port::VALUE_LO => lo = v,
                        port::VALUE_HI => report
                            .values
                            .push((key, u64::from(lo) | u64::from(v) << 32)),
                        port::HOST => {
                            host(dev, v).with_context(|| format!("host action {v:#x}"))?
                        }
                        port::DONE => {
                            report.status = Some(v);
                            return Ok(report);
                        }
                        0xCFC..=0xCFF => {
                            if let Some(off) = config_target(cf8, p, 1) {
                                dev.config_write(off, data)
                                    .with_context(|| format!("config write {off:#x}"))?;
                            }
                        }
                        _ => log::debug!("unhandled port write {p:#x}"),
                    }
                }
                VcpuExit::IoIn(p, data) => {
                    data.fill(0xff);
                    match p {
                        port::CONFIG_ADDRESS if data.len() == 4 => {
                            data.copy_from_slice(&cf8.to_le_bytes())
                        }
                        0xCFC..=0xCFF => match (config_target(cf8, p, 0), config_target(cf8, p, 1))
                        {
                            (Some(off), _) => host_bridge_read(off, data),
                            (_, Some(off)) => dev.config_read(off, data),
                            _ => {}
                        },
                        _ => log::debug!("unhandled port read {p:#x}"),
                    }
                }
                VcpuExit::MmioRead(gpa, data) => {
                    report.mmio_exits.push((gpa, false));
                    if !dev.mmio_read(gpa, data)? {
                        log::debug!("MMIO read of nothing at {gpa:#x}");
                        data.fill(0xff);
                    }
                }
                VcpuExit::MmioWrite(gpa, data) => {
                    report.mmio_exits.push((gpa, true));
                    if !dev.mmio_write(gpa, data)? {
                        log::debug!("MMIO write to nothing at {gpa:#x}");
                    }
                }
                VcpuExit::Hlt => {
                    bail!("HLT exit (the in-kernel LAPIC should keep it); reported {report:x?}")
                }
                VcpuExit::Shutdown => {
                    bail!("the guest shut down (triple fault); it reported {report:x?}")
                }
                other => bail!("unexpected exit {other:?}; the guest reported {report:x?}"),
            }
        }
    }
}

fn le(data: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    b[..data.len().min(8)].copy_from_slice(&data[..data.len().min(8)]);
    u64::from_le_bytes(b)
}

/// The config offset a data-port access at `port` reaches, if CF8 selects 00:`dev`.0.
fn config_target(cf8: u32, port: u16, dev: u32) -> Option<u16> {
    let enabled = cf8 & 0x8000_0000 != 0;
    let (bus, d, func) = ((cf8 >> 16) & 0xff, (cf8 >> 11) & 0x1f, (cf8 >> 8) & 7);
    (enabled && bus == 0 && d == dev && func == 0)
        .then(|| (cf8 & 0xfc) as u16 + (port - port::CONFIG_DATA))
}

/// A minimal host bridge (Intel Q35's ids, class 06/00): read-only.
fn host_bridge_read(off: u16, data: &mut [u8]) {
    let mut cfg = [0u8; 256];
    cfg[0..4].copy_from_slice(&0x29c0_8086u32.to_le_bytes());
    cfg[0xb] = 0x06;
    for (i, b) in data.iter_mut().enumerate() {
        *b = cfg.get(usize::from(off) + i).copied().unwrap_or(0xff);
    }
}

/// Sets a flag after `timeout` and kicks the vCPU thread out of KVM_RUN with a signal (a
/// guest stuck in `hlt` would otherwise never return). Dropping it stops and joins its
/// thread, so no signal is sent once `run` has returned.
struct Watchdog {
    expired: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// The vCPU thread's id, handed to the watchdog thread (a pointer on musl).
struct Thread(libc::pthread_t);
// SAFETY: a thread id is a plain handle; it is only passed to pthread_kill.
unsafe impl Send for Thread {}

impl Thread {
    fn kick(&self, sig: libc::c_int) {
        // SAFETY: the vCPU thread is inside `run`, which joins this watchdog before it
        // returns (so the id is live); the signal's handler does nothing.
        unsafe { libc::pthread_kill(self.0, sig) };
    }
}

extern "C" fn on_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

impl Watchdog {
    fn start(timeout: Duration) -> Watchdog {
        static HANDLER: Once = Once::new();
        let sig = kick_signal();
        HANDLER.call_once(|| {
            if let Err(e) = vmm_sys_util::signal::register_signal_handler(sig, on_kick) {
                log::warn!("no watchdog signal handler: {e}");
            }
        });
        let expired = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let (flag, stopped) = (expired.clone(), stop.clone());
        // SAFETY: pthread_self has no preconditions.
        let me = Thread(unsafe { libc::pthread_self() });
        let thread = std::thread::spawn(move || {
            let step = Duration::from_millis(50);
            let deadline = std::time::Instant::now() + timeout;
            while !stopped.load(Ordering::SeqCst) {
                if std::time::Instant::now() >= deadline {
                    flag.store(true, Ordering::SeqCst);
                    me.kick(sig);
                }
                std::thread::park_timeout(step);
            }
        });
        Watchdog {
            expired,
            stop,
            thread: Some(thread),
        }
    }

    fn expired(&self) -> bool {
        self.expired.load(Ordering::SeqCst)
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            let _ = t.join();
        }
    }
}

fn kick_signal() -> libc::c_int {
    vmm_sys_util::signal::SIGRTMIN() + 3
}
