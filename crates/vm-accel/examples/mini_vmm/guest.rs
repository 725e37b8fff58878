//! The guest programs, assembled here in Rust (iced-x86's code assembler): no committed
//! binaries, and every instruction is readable next to the VMM that runs it.
//!
//! The VMM starts the vCPU in 64-bit mode with 0..128 GiB identity mapped, so
//! a program reaches its RAM, the LAPIC and any BAR it places, 64 GiB ones included, by
//! address. A program only *reports* what it saw (key, value) through I/O ports; the host
//! side decides what is right, so a wrong value fails with a message naming it.

use iced_x86::code_asm::*;
use iced_x86::BlockEncoderOptions;

use crate::vmm::{layout, port};

/// Report keys (what the value means). The host asserts on them.
pub mod key {
    /// Device number (bus 0) of the function found.
    pub const DEVICE: u32 = 1;
    /// Its vendor (low 16 bits) and device id (high 16 bits).
    pub const ID: u32 = 2;
    /// The BAR's size, from the all-ones sizing writes.
    pub const BAR_SIZE: u32 = 3;
    /// The guest physical address the program gave the BAR.
    pub const BAR_ADDR: u32 = 4;
    /// The BAR register (low | high << 32) read back after programming.
    pub const BAR_REG: u32 = 5;
    /// edu: the identification register (BAR0 + 0).
    pub const EDU_ID: u32 = 10;
    /// edu: qwords that differ between the source buffer and the copy back.
    pub const DMA_MISMATCHES: u32 = 11;
    /// edu: MSI control register after enabling.
    pub const MSI_CONTROL: u32 = 12;
    /// edu: interrupts the MSI handler took.
    pub const IRQ_COUNT: u32 = 13;
    /// edu: the interrupt status the handler read (and acked).
    pub const IRQ_STATUS: u32 = 14;
    /// edu: the BAR's new address after the guest moved it.
    pub const MOVED_ADDR: u32 = 15;
    /// edu: the identification register read at the new address.
    pub const MOVED_EDU_ID: u32 = 16;
    /// edu: a read at the BAR's old address after the move.
    pub const OLD_ADDR_READ: u32 = 17;
    /// MSI-X: table size (entries).
    pub const MSIX_SIZE: u32 = 20;
    /// MSI-X: per-vector interrupt counts, one byte each (vector 0 in the low byte).
    pub const MSIX_COUNTS: u32 = 21;
    /// MSI-X: PBA qword 0 after vector 1 was masked and fired.
    pub const MSIX_PBA_MASKED: u32 = 22;
    /// MSI-X: PBA qword 0 after vector 1 was unmasked and delivered.
    pub const MSIX_PBA_AFTER: u32 = 23;
    /// MSI-X: counts just after the masked vector fired (before unmask).
    pub const MSIX_COUNTS_MASKED: u32 = 24;
    /// Large BAR: the qword read at BAR end - 16 (the host put a value there).
    pub const FAR_READ: u32 = 30;
    /// Large BAR: the qword written at BAR end - 8 and read back.
    pub const FAR_READBACK: u32 = 31;
    /// A CPU exception: the vector (the program stops).
    pub const EXCEPTION: u32 = 0xEE;
}

/// Host actions a program asks for through [`port::HOST`].
pub mod action {
    /// Fire MSI-X vector `n` from the host side: `FIRE_MSIX + n`.
    pub const FIRE_MSIX: u32 = 0x100;
}

/// `done` statuses other than 0 (pass).
pub mod status {
    /// No function other than a host bridge on bus 0.
    pub const NO_DEVICE: u32 = 1;
    /// The capability the program needs is missing.
    pub const NO_CAPABILITY: u32 = 2;
    /// The MSI-X table is not in the BAR the program programmed.
    pub const TABLE_ELSEWHERE: u32 = 3;
    /// A CPU exception (see [`super::key::EXCEPTION`]).
    pub const EXCEPTION: u32 = 0xDEAD;
}

/// Interrupt vectors the programs use.
pub const EDU_VECTOR: u8 = 0x40;
/// MSI-X vector `i` arrives as `MSIX_VECTOR + i`.
pub const MSIX_VECTOR: u8 = 0x50;
/// MSI-X vectors the MSI-X program uses (vector 1 is masked and fired once more).
pub const MSIX_USED: u32 = 3;
/// Bytes the edu program moves each way (edu's buffer is 4 KiB).
pub const DMA_LEN: u64 = 1024;
/// A pattern the host puts at the large BAR's end - 16 before the guest runs.
pub const FAR_MAGIC: u64 = 0x5a5a_0123_4567_a5a5;
/// What the guest writes at the large BAR's end - 8.
pub const FAR_PATTERN: u64 = 0xfeed_f00d_dead_beef;

/// Where the program places a BAR that is below 256 MiB.
pub const LOW_BAR_BASE: u64 = 0xE000_0000;
/// Where a 64-bit BAR of 256 MiB or more goes (or at its size, when larger).
pub const HIGH_BAR_BASE: u64 = 64 << 30;

/// An assembled program: bytes for [`layout::CODE`], IDT gates to install.
#[derive(Debug)]
pub struct Program {
    pub code: Vec<u8>,
    /// (vector, handler address) pairs.
    pub gates: Vec<(u8, u64)>,
}

/// What the program does after finding the device and programming its BAR.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    /// edu: ID register, DMA both ways, MSI completion interrupt; optionally moves BAR0
    /// and reads the ID again.
    Edu { move_bar: bool },
    /// MSI-X through the emulated table: the host fires vectors 0, 1, 2 (each arrives), then
    /// vector 1 again while the guest has it masked: it must not arrive but be pending in
    /// the PBA, and arrive when unmasked.
    Msix,
    /// A large 64-bit BAR (index `bar`): read and write its far end through the memslot.
    LargeBar { bar: u8 },
}

type R<T> = Result<T, IcedError>;

struct Asm {
    a: CodeAssembler,
    cfg_rd32: CodeLabel,
    cfg_rd16: CodeLabel,
    cfg_wr32: CodeLabel,
    cfg_wr16: CodeLabel,
    report: CodeLabel,
    done: CodeLabel,
}

/// Assembles the program for `scenario`.
pub fn build(scenario: Scenario) -> R<Program> {
    let mut a = CodeAssembler::new(64)?;
    let (cfg_rd32, cfg_rd16, cfg_wr32, cfg_wr16, report, done) = (
        a.create_label(),
        a.create_label(),
        a.create_label(),
        a.create_label(),
        a.create_label(),
        a.create_label(),
    );
    let mut g = Asm {
        a,
        cfg_rd32,
        cfg_rd16,
        cfg_wr32,
        cfg_wr16,
        report,
        done,
    };
    let bar = match scenario {
        Scenario::LargeBar { bar } => bar,
        _ => 0,
    };
    g.enable_lapic()?;
    g.find_device()?;
    g.program_bar(bar)?;
    match scenario {
        Scenario::Edu { move_bar } => g.edu(move_bar)?,
        Scenario::Msix => g.msix()?,
        Scenario::LargeBar { .. } => g.large_bar()?,
    }
    g.a.xor(esi, esi)?;
    g.a.jmp(g.done)?;
    let handlers = match scenario {
        Scenario::Edu { .. } => vec![(EDU_VECTOR, g.edu_handler()?)],
        Scenario::Msix => g.msix_handlers()?,
        Scenario::LargeBar { .. } => Vec::new(),
    };
    let exceptions = g.exception_stubs()?;
    g.subroutines()?;
    let mut a = g.a;
    let res = a.assemble_options(
        layout::CODE,
        BlockEncoderOptions::RETURN_NEW_INSTRUCTION_OFFSETS,
    )?;
    let mut gates = Vec::new();
    for (v, l) in exceptions
        .iter()
        .enumerate()
        .chain(handlers.iter().map(|(v, l)| (usize::from(*v), l)))
    {
        gates.push((v as u8, res.label_ip(l)?));
    }
    Ok(Program {
        code: res.inner.code_buffer,
        gates,
    })
}

impl Asm {
    /// `report(key, value)` with immediate key and the value in `rdi`.
    fn report_rdi(&mut self, key: u32) -> R<()> {
        self.a.mov(esi, key)?;
        self.a.call(self.report)
    }

    fn cfg_read32(&mut self, off: u32) -> R<()> {
        self.a.mov(esi, off)?;
        self.a.call(self.cfg_rd32)
    }

    fn cfg_write32(&mut self, off: u32, val: u32) -> R<()> {
        self.a.mov(esi, off)?;
        self.a.mov(edi, val)?;
        self.a.call(self.cfg_wr32)
    }

    /// Software-enables the LAPIC (SVR) and opens interrupts.
    fn enable_lapic(&mut self) -> R<()> {
        self.a.mov(rax, layout::LAPIC + 0xF0)?;
        self.a.mov(dword_ptr(rax), 0x1FF)?;
        self.a.sti()
    }

    /// Scans bus 0 for the first function that is not a bridge; r12d = its CF8 base.
    fn find_device(&mut self) -> R<()> {
        let a = &mut self.a;
        let (mut scan, mut next, mut found) =
            (a.create_label(), a.create_label(), a.create_label());
        a.xor(ebx, ebx)?;
        a.set_label(&mut scan)?;
        a.mov(r12d, ebx)?;
        a.shl(r12d, 11)?;
        a.or(r12d, 0x8000_0000u32 as i32)?;
        self.cfg_read32(0)?;
        let a = &mut self.a;
        a.cmp(ax, 0xffff)?;
        a.je(next)?;
        self.cfg_read32(8)?;
        let a = &mut self.a;
        a.shr(eax, 24)?;
        a.cmp(eax, 6)?;
        a.jne(found)?;
        a.set_label(&mut next)?;
        a.inc(ebx)?;
        a.cmp(ebx, 32)?;
        a.jb(scan)?;
        a.mov(esi, status::NO_DEVICE)?;
        a.jmp(self.done)?;
        a.set_label(&mut found)?;
        a.mov(edi, ebx)?;
        self.report_rdi(key::DEVICE)?;
        self.cfg_read32(0)?;
        self.a.mov(edi, eax)?;
        self.report_rdi(key::ID)
    }

    /// Sizes BAR `bar` with MEM decoding off, places it, turns MEM and bus mastering on.
    /// r13 = its address, r15 = its size, r14d = the original COMMAND, r11d = the BAR
    /// register's original low dword (type bits).
    fn program_bar(&mut self, bar: u8) -> R<()> {
        let off = 0x10 + 4 * u32::from(bar);
        self.cfg_read32(4)?;
        let a = &mut self.a;
        a.movzx(r14d, ax)?;
        a.mov(esi, 4)?;
        a.mov(edi, r14d)?;
        a.and(edi, !7)?;
        a.call(self.cfg_wr16)?;
        self.cfg_read32(off)?;
        self.a.mov(r11d, eax)?;
        self.cfg_write32(off, 0xffff_ffff)?;
        self.cfg_read32(off)?;
        let a = &mut self.a;
        let (mut lo_only, mut sized, mut place) =
            (a.create_label(), a.create_label(), a.create_label());
        a.and(eax, 0xffff_fff0u32 as i32)?;
        a.mov(r15d, eax)?;
        a.mov(eax, r11d)?;
        a.and(eax, 6)?;
        a.cmp(eax, 4)?;
        a.jne(lo_only)?;
        self.cfg_write32(off + 4, 0xffff_ffff)?;
        self.cfg_read32(off + 4)?;
        let a = &mut self.a;
        a.shl(rax, 32)?;
        a.or(r15, rax)?;
        a.jmp(sized)?;
        a.set_label(&mut lo_only)?;
        a.mov(rax, 0xffff_ffff_0000_0000u64)?;
        a.or(r15, rax)?;
        a.set_label(&mut sized)?;
        a.neg(r15)?;
        a.mov(rdi, r15)?;
        self.report_rdi(key::BAR_SIZE)?;
        // Below 256 MiB: the 32-bit window. Larger (64-bit only): 64 GiB, or its size.
        let a = &mut self.a;
        a.mov(r13d, LOW_BAR_BASE as u32)?;
        a.cmp(r15, 0x1000_0000)?;
        a.jb(place)?;
        a.mov(r13, HIGH_BAR_BASE)?;
        a.cmp(r15, r13)?;
        a.jbe(place)?;
        a.mov(r13, r15)?;
        a.set_label(&mut place)?;
        a.mov(esi, off)?;
        a.mov(edi, r11d)?;
        a.and(edi, 0xf)?;
        a.or(edi, r13d)?;
        a.call(self.cfg_wr32)?;
        a.mov(eax, r11d)?;
        a.and(eax, 6)?;
        a.cmp(eax, 4)?;
        let mut no_hi = a.create_label();
        a.jne(no_hi)?;
        a.mov(esi, off + 4)?;
        a.mov(rdi, r13)?;
        a.shr(rdi, 32)?;
        a.call(self.cfg_wr32)?;
        a.set_label(&mut no_hi)?;
        self.cfg_read32(off + 4)?;
        self.a.mov(edi, eax)?;
        self.a.shl(rdi, 32)?;
        self.cfg_read32(off)?;
        self.a.or(rdi, rax)?;
        self.report_rdi(key::BAR_REG)?;
        let a = &mut self.a;
        a.mov(rax, layout::BAR_BASE_SLOT)?;
        a.mov(qword_ptr(rax), r13)?;
        a.mov(esi, 4)?;
        a.mov(edi, r14d)?;
        a.or(edi, 6)?;
        a.call(self.cfg_wr16)?;
        a.mov(rdi, r13)?;
        self.report_rdi(key::BAR_ADDR)
    }

    /// Walks the capability list for `id`; ebx = its offset. Stops the program if absent.
    fn find_cap(&mut self, id: u8) -> R<()> {
        self.cfg_read32(0x34)?;
        let a = &mut self.a;
        let (mut walk, mut found, mut missing) =
            (a.create_label(), a.create_label(), a.create_label());
        a.movzx(ebx, al)?;
        a.set_label(&mut walk)?;
        a.and(ebx, 0xfc)?;
        a.test(ebx, ebx)?;
        a.jz(missing)?;
        a.mov(esi, ebx)?;
        a.call(self.cfg_rd32)?;
        a.cmp(al, i32::from(id))?;
        a.je(found)?;
        a.movzx(ebx, ah)?;
        a.jmp(walk)?;
        a.set_label(&mut missing)?;
        a.mov(esi, status::NO_CAPABILITY)?;
        a.jmp(self.done)?;
        a.set_label(&mut found)
    }

    /// Waits (hlt) until the dword at `counter` is at least `want` (ecx). Clobbers eax.
    fn wait_count(&mut self, counter: u64, want: u32) -> R<()> {
        let a = &mut self.a;
        let (mut wait, mut got) = (a.create_label(), a.create_label());
        a.set_label(&mut wait)?;
        a.cli()?;
        a.mov(rax, counter)?;
        a.mov(eax, dword_ptr(rax))?;
        a.cmp(eax, want)?;
        a.jae(got)?;
        // sti's one-instruction shadow makes sti;hlt atomic: no wake-up is lost.
        a.sti()?;
        a.hlt()?;
        a.jmp(wait)?;
        a.set_label(&mut got)?;
        a.sti()
    }

    /// Starts an edu DMA (src, dst, cmd) and polls until the engine is idle.
    fn edu_dma(&mut self, src: u64, dst: u64, cmd: u64) -> R<()> {
        let a = &mut self.a;
        a.mov(rax, src)?;
        a.mov(qword_ptr(r13 + 0x80), rax)?;
        a.mov(rax, dst)?;
        a.mov(qword_ptr(r13 + 0x88), rax)?;
        a.mov(rax, DMA_LEN)?;
        a.mov(qword_ptr(r13 + 0x90), rax)?;
        a.mov(rax, cmd)?;
        a.mov(qword_ptr(r13 + 0x98), rax)?;
        let mut poll = a.create_label();
        a.set_label(&mut poll)?;
        a.pause()?;
        a.mov(rax, qword_ptr(r13 + 0x98))?;
        a.test(al, 1)?;
        a.jnz(poll)
    }

    /// The edu scenario (its MSI handler is [`Asm::edu_handler`]).
    fn edu(&mut self, move_bar: bool) -> R<()> {
        const EDU_BUF: u64 = 0x40000;
        let a = &mut self.a;
        a.mov(edi, dword_ptr(r13))?;
        self.report_rdi(key::EDU_ID)?;
        // Source: a counting pattern; destination: zeroes.
        let a = &mut self.a;
        let mut fill = a.create_label();
        a.mov(rsi, layout::DMA_SRC)?;
        a.mov(rdi, layout::DMA_DST)?;
        a.mov(rax, 0x1122_3344_5566_7788u64)?;
        a.mov(rdx, 0x0101_0101_0101_0101u64)?;
        a.mov(ecx, (DMA_LEN / 8) as u32)?;
        a.set_label(&mut fill)?;
        a.mov(qword_ptr(rsi), rax)?;
        a.mov(qword_ptr(rdi), 0)?;
        a.add(rax, rdx)?;
        a.add(rsi, 8)?;
        a.add(rdi, 8)?;
        a.dec(ecx)?;
        a.jnz(fill)?;
        // RAM -> device (edu's DMA addresses are IOVAs; IOVA = GPA here).
        self.edu_dma(layout::DMA_SRC, EDU_BUF, 1)?;
        // MSI: address, data, then enable (1 vector).
        self.find_cap(0x05)?;
        let a = &mut self.a;
        let mut is32 = a.create_label();
        let mut programmed = a.create_label();
        a.lea(esi, dword_ptr(rbx + 4))?;
        a.mov(edi, layout::LAPIC as u32)?;
        a.call(self.cfg_wr32)?;
        a.mov(esi, ebx)?;
        a.call(self.cfg_rd32)?;
        a.mov(ebp, eax)?;
        a.shr(ebp, 16)?;
        a.test(ebp, 0x80)?;
        a.jz(is32)?;
        a.lea(esi, dword_ptr(rbx + 8))?;
        a.xor(edi, edi)?;
        a.call(self.cfg_wr32)?;
        a.lea(esi, dword_ptr(rbx + 0xC))?;
        a.mov(edi, u32::from(EDU_VECTOR))?;
        a.call(self.cfg_wr16)?;
        a.jmp(programmed)?;
        a.set_label(&mut is32)?;
        a.lea(esi, dword_ptr(rbx + 8))?;
        a.mov(edi, u32::from(EDU_VECTOR))?;
        a.call(self.cfg_wr16)?;
        a.set_label(&mut programmed)?;
        a.lea(esi, dword_ptr(rbx + 2))?;
        a.mov(edi, ebp)?;
        a.and(edi, !0x70)?;
        a.or(edi, 1)?;
        a.call(self.cfg_wr16)?;
        a.lea(esi, dword_ptr(rbx + 2))?;
        a.call(self.cfg_rd16)?;
        a.mov(edi, eax)?;
        self.report_rdi(key::MSI_CONTROL)?;
        // Device -> RAM, raising the completion interrupt (cmd bit 2).
        self.edu_dma(EDU_BUF, layout::DMA_DST, 1 | 2 | 4)?;
        self.wait_count(layout::IRQ_COUNT, 1)?;
        let a = &mut self.a;
        a.mov(rax, layout::IRQ_COUNT)?;
        a.mov(edi, dword_ptr(rax))?;
        self.report_rdi(key::IRQ_COUNT)?;
        self.a.mov(rax, layout::IRQ_STATUS)?;
        self.a.mov(edi, dword_ptr(rax))?;
        self.report_rdi(key::IRQ_STATUS)?;
        let a = &mut self.a;
        let (mut cmp, mut same) = (a.create_label(), a.create_label());
        a.mov(rsi, layout::DMA_SRC)?;
        a.mov(rdx, layout::DMA_DST)?;
        a.mov(ecx, (DMA_LEN / 8) as u32)?;
        a.xor(edi, edi)?;
        a.set_label(&mut cmp)?;
        a.mov(rax, qword_ptr(rsi))?;
        a.cmp(rax, qword_ptr(rdx))?;
        a.je(same)?;
        a.inc(edi)?;
        a.set_label(&mut same)?;
        a.add(rsi, 8)?;
        a.add(rdx, 8)?;
        a.dec(ecx)?;
        a.jnz(cmp)?;
        self.report_rdi(key::DMA_MISMATCHES)?;
        if move_bar {
            self.move_bar0()?;
        }
        Ok(())
    }

    /// Moves BAR0 up by its size (MEM off, new address, MEM on) and reads the ID there,
    /// then reads the old address.
    fn move_bar0(&mut self) -> R<()> {
        let a = &mut self.a;
        a.mov(esi, 4)?;
        a.mov(edi, r14d)?;
        a.or(edi, 4)?;
        a.and(edi, !3)?;
        a.call(self.cfg_wr16)?;
        a.mov(rbx, r13)?;
        a.add(r13, r15)?;
        a.mov(esi, 0x10)?;
        a.mov(edi, r11d)?;
        a.and(edi, 0xf)?;
        a.or(edi, r13d)?;
        a.call(self.cfg_wr32)?;
        a.mov(esi, 4)?;
        a.mov(edi, r14d)?;
        a.or(edi, 6)?;
        a.call(self.cfg_wr16)?;
        a.mov(rax, layout::BAR_BASE_SLOT)?;
        a.mov(qword_ptr(rax), r13)?;
        a.mov(rdi, r13)?;
        self.report_rdi(key::MOVED_ADDR)?;
        self.a.mov(edi, dword_ptr(r13))?;
        self.report_rdi(key::MOVED_EDU_ID)?;
        self.a.mov(edi, dword_ptr(rbx))?;
        self.report_rdi(key::OLD_ADDR_READ)
    }

    /// edu's MSI handler: reads and acks the interrupt status, counts, EOIs.
    fn edu_handler(&mut self) -> R<CodeLabel> {
        let a = &mut self.a;
        let mut h = a.create_label();
        a.set_label(&mut h)?;
        a.push(rax)?;
        a.push(rbx)?;
        a.mov(rax, layout::BAR_BASE_SLOT)?;
        a.mov(rbx, qword_ptr(rax))?;
        a.mov(eax, dword_ptr(rbx + 0x24))?;
        a.mov(dword_ptr(rbx + 0x64), eax)?;
        a.mov(rbx, layout::IRQ_STATUS)?;
        a.mov(dword_ptr(rbx), eax)?;
        a.mov(rbx, layout::IRQ_COUNT)?;
        a.inc(dword_ptr(rbx))?;
        a.mov(rax, layout::LAPIC + 0xB0)?;
        a.mov(dword_ptr(rax), 0)?;
        a.pop(rbx)?;
        a.pop(rax)?;
        a.iretq()?;
        Ok(h)
    }

    /// Writes MSI-X entry `i`'s vector control (0: unmasked, 1: masked); rbx = table.
    fn msix_ctrl(&mut self, i: u32, masked: bool) -> R<()> {
        self.a
            .mov(dword_ptr(rbx + (16 * i + 12)), u32::from(masked))
    }

    /// Packs the MSI-X counters (one byte each) into edi.
    fn msix_counts(&mut self) -> R<()> {
        let a = &mut self.a;
        a.xor(edi, edi)?;
        for i in (0..MSIX_USED).rev() {
            a.shl(edi, 8)?;
            a.mov(rax, layout::MSIX_COUNT + 4 * u64::from(i))?;
            a.or(edi, dword_ptr(rax))?;
        }
        Ok(())
    }

    fn host_action(&mut self, code: u32) -> R<()> {
        let a = &mut self.a;
        a.mov(dx, i32::from(port::HOST))?;
        a.mov(eax, code)?;
        a.out(dx, eax)
    }

    /// The MSI-X scenario (handlers: [`Asm::msix_handlers`]).
    fn msix(&mut self) -> R<()> {
        let a = &mut self.a;
        let (mut elsewhere, mut go) = (a.create_label(), a.create_label());
        a.jmp(go)?;
        a.set_label(&mut elsewhere)?;
        a.mov(esi, status::TABLE_ELSEWHERE)?;
        a.jmp(self.done)?;
        a.set_label(&mut go)?;
        self.find_cap(0x11)?;
        // r10d = the capability, r8 = table, r9 = PBA (both in the BAR programmed above).
        let a = &mut self.a;
        a.mov(r10d, ebx)?;
        a.lea(esi, dword_ptr(rbx + 4))?;
        a.call(self.cfg_rd32)?;
        a.mov(ecx, eax)?;
        a.and(ecx, 7)?;
        a.jnz(elsewhere)?;
        a.and(eax, !7)?;
        a.lea(r8, qword_ptr(r13 + rax))?;
        a.lea(esi, dword_ptr(rbx + 8))?;
        a.call(self.cfg_rd32)?;
        a.mov(ecx, eax)?;
        a.and(ecx, 7)?;
        a.jnz(elsewhere)?;
        a.and(eax, !7)?;
        a.lea(r9, qword_ptr(r13 + rax))?;
        a.lea(esi, dword_ptr(rbx + 2))?;
        a.call(self.cfg_rd16)?;
        a.mov(ebp, eax)?;
        a.mov(edi, eax)?;
        a.and(edi, 0x7ff)?;
        a.inc(edi)?;
        self.report_rdi(key::MSIX_SIZE)?;
        // Entries 0..3 -> vectors MSIX_VECTOR + i on APIC 0, unmasked.
        self.a.mov(rbx, r8)?;
        for i in 0..MSIX_USED {
            let a = &mut self.a;
            a.mov(dword_ptr(rbx + 16 * i), layout::LAPIC as u32)?;
            a.mov(dword_ptr(rbx + (16 * i + 4)), 0)?;
            a.mov(dword_ptr(rbx + (16 * i + 8)), u32::from(MSIX_VECTOR) + i)?;
            self.msix_ctrl(i, false)?;
        }
        // Enable, function mask off.
        let a = &mut self.a;
        a.lea(esi, dword_ptr(r10 + 2))?;
        a.mov(edi, ebp)?;
        a.and(edi, !0x4000)?;
        a.or(edi, 0x8000)?;
        a.call(self.cfg_wr16)?;
        // Each vector arrives, as its own interrupt.
        for i in 0..MSIX_USED {
            self.host_action(action::FIRE_MSIX + i)?;
            self.wait_count(layout::MSIX_COUNT + 4 * u64::from(i), 1)?;
        }
        // Vector 1 masked, then fired: not delivered, pending.
        self.msix_ctrl(1, true)?;
        self.host_action(action::FIRE_MSIX + 1)?;
        self.a.mov(rdi, qword_ptr(r9))?;
        self.report_rdi(key::MSIX_PBA_MASKED)?;
        self.msix_counts()?;
        self.report_rdi(key::MSIX_COUNTS_MASKED)?;
        // Unmask: it is delivered, and no longer pending.
        self.msix_ctrl(1, false)?;
        self.wait_count(layout::MSIX_COUNT + 4, 2)?;
        self.a.mov(rdi, qword_ptr(r9))?;
        self.report_rdi(key::MSIX_PBA_AFTER)?;
        self.msix_counts()?;
        self.report_rdi(key::MSIX_COUNTS)
    }

    /// One handler per MSI-X vector: count, EOI.
    fn msix_handlers(&mut self) -> R<Vec<(u8, CodeLabel)>> {
        let mut handlers = Vec::new();
        for i in 0..MSIX_USED {
            let a = &mut self.a;
            let mut h = a.create_label();
            a.set_label(&mut h)?;
            a.push(rax)?;
            a.mov(rax, layout::MSIX_COUNT + 4 * u64::from(i))?;
            a.inc(dword_ptr(rax))?;
            a.mov(rax, layout::LAPIC + 0xB0)?;
            a.mov(dword_ptr(rax), 0)?;
            a.pop(rax)?;
            a.iretq()?;
            handlers.push((MSIX_VECTOR + i as u8, h));
        }
        Ok(handlers)
    }

    /// The large-BAR scenario: the far end of the BAR, through its memslot.
    fn large_bar(&mut self) -> R<()> {
        let a = &mut self.a;
        a.lea(rbx, qword_ptr(r13 + r15))?;
        a.mov(rdi, qword_ptr(rbx - 16))?;
        self.report_rdi(key::FAR_READ)?;
        let a = &mut self.a;
        a.mov(rax, FAR_PATTERN)?;
        a.mov(qword_ptr(rbx - 8), rax)?;
        a.mov(rdi, qword_ptr(rbx - 8))?;
        self.report_rdi(key::FAR_READBACK)
    }

    /// One stub per CPU exception: report the vector, stop.
    fn exception_stubs(&mut self) -> R<Vec<CodeLabel>> {
        let mut v = Vec::new();
        for vector in 0..32u32 {
            let a = &mut self.a;
            let mut l = a.create_label();
            a.set_label(&mut l)?;
            a.mov(edi, vector)?;
            self.report_rdi(key::EXCEPTION)?;
            self.a.mov(esi, status::EXCEPTION)?;
            self.a.jmp(self.done)?;
            v.push(l);
        }
        Ok(v)
    }

    /// The subroutines. Config: esi = offset, edi = value, eax = result; r12d = the
    /// device's CF8 base; they clobber only eax and edx.
    fn subroutines(&mut self) -> R<()> {
        let a = &mut self.a;
        let select = |a: &mut CodeAssembler| -> R<()> {
            a.mov(eax, esi)?;
            a.and(eax, 0xfc)?;
            a.or(eax, r12d)?;
            a.mov(dx, i32::from(port::CONFIG_ADDRESS))?;
            a.out(dx, eax)?;
            a.mov(edx, esi)?;
            a.and(edx, 2)?;
            a.add(edx, u32::from(port::CONFIG_DATA))
        };
        a.set_label(&mut self.cfg_rd32)?;
        select(a)?;
        a.in_(eax, dx)?;
        a.ret()?;
        a.set_label(&mut self.cfg_rd16)?;
        select(a)?;
        a.in_(ax, dx)?;
        a.movzx(eax, ax)?;
        a.ret()?;
        a.set_label(&mut self.cfg_wr32)?;
        select(a)?;
        a.mov(eax, edi)?;
        a.out(dx, eax)?;
        a.ret()?;
        a.set_label(&mut self.cfg_wr16)?;
        select(a)?;
        a.mov(eax, edi)?;
        a.out(dx, ax)?;
        a.ret()?;
        // report: esi = key, rdi = value (the high half's write commits the pair).
        a.set_label(&mut self.report)?;
        a.push(rax)?;
        a.push(rdx)?;
        a.mov(dx, i32::from(port::KEY))?;
        a.mov(eax, esi)?;
        a.out(dx, eax)?;
        a.mov(dx, i32::from(port::VALUE_LO))?;
        a.mov(eax, edi)?;
        a.out(dx, eax)?;
        a.mov(rax, rdi)?;
        a.shr(rax, 32)?;
        a.mov(dx, i32::from(port::VALUE_HI))?;
        a.out(dx, eax)?;
        a.pop(rdx)?;
        a.pop(rax)?;
        a.ret()?;
        // done: esi = status; the VMM stops at this write.
        let mut stop = a.create_label();
        a.set_label(&mut self.done)?;
        a.mov(dx, i32::from(port::DONE))?;
        a.mov(eax, esi)?;
        a.out(dx, eax)?;
        a.set_label(&mut stop)?;
        a.cli()?;
        a.hlt()?;
        a.jmp(stop)
    }
}
