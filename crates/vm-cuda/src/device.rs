//! CUDA devices: enumeration, identity (PCI location, UUID) and limits.

use std::ffi::{c_char, c_int};

use crate::error::{DriverCode, Error, Result};
use crate::sys;

/// Initialises the driver API (idempotent, cheap after the first call).
pub fn init() -> Result<()> {
    // SAFETY: cuInit takes flags by value and has no other preconditions.
    unsafe { sys::cuInit(0) }.ok("cuInit")
}

/// The driver's CUDA version as (major, minor), e.g. (13, 0).
pub fn driver_version() -> Result<(u32, u32)> {
    init()?;
    let mut v: c_int = 0;
    // SAFETY: `v` is a valid out-pointer.
    unsafe { sys::cuDriverGetVersion(&mut v) }.ok("cuDriverGetVersion")?;
    let v = u32::try_from(v).unwrap_or(0);
    Ok((v / 1000, (v % 1000) / 10))
}

/// One CUDA device, by ordinal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Device {
    ordinal: u32,
    raw: sys::CUdevice,
}

/// Where the device sits on PCI, to join with vm-pci's inventory. CUDA reports no function
/// number; GPUs are function 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct PciLocation {
    /// PCI domain.
    pub domain: u32,
    /// PCI bus.
    pub bus: u8,
    /// PCI device (slot); CUDA reports no function number.
    pub device: u8,
}

impl std::fmt::Display for PciLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:04x}:{:02x}:{:02x}.0",
            self.domain, self.bus, self.device
        )
    }
}

/// Launch limits, read once per context and used to validate every launch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Limits {
    /// Most threads in one block.
    pub max_threads_per_block: u32,
    /// Largest block, per dimension.
    pub max_block_dim: [u32; 3],
    /// Largest grid, per dimension.
    pub max_grid_dim: [u32; 3],
    /// Shared memory a block gets without opting in (48 KiB on every GPU so far).
    pub max_shared_per_block: u32,
    /// Shared memory a block may get after opting in (`Kernel::set_max_dynamic_shared_bytes`).
    pub max_shared_per_block_optin: u32,
    /// Threads per warp.
    pub warp_size: u32,
}

/// Everything `vm-accel cuda info` reports about a device.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct DeviceInfo {
    /// The CUDA ordinal (CUDA's order, not PCI order).
    pub ordinal: u32,
    /// Marketing name, e.g. `NVIDIA H200`.
    pub name: String,
    /// `GPU-xxxxxxxx-xxxx-...` as nvidia-smi prints it, when the driver reports one.
    pub uuid: Option<String>,
    /// The PCI location as numbers; JSON carries it as `bdf` only (one name and type for
    /// an address in every vm-accel document).
    #[serde(skip)]
    pub pci: PciLocation,
    /// The PCI address as a string (`dddd:bb:dd.0`), `bdf` in JSON.
    #[serde(rename = "bdf")]
    pub pci_bdf: String,
    /// Device memory, in bytes.
    pub total_memory_bytes: u64,
    /// Compute capability (major, minor), e.g. (9, 0) for Hopper.
    pub compute_capability: (u32, u32),
    /// Streaming multiprocessors.
    pub sm_count: u32,
    /// Peak SM clock, in kHz.
    pub clock_khz: u32,
    /// Peak memory clock, in kHz.
    pub memory_clock_khz: u32,
    /// Memory bus width, in bits.
    pub memory_bus_width_bits: u32,
    /// Theoretical memory bandwidth: 2 transfers per clock × clock × bus width.
    pub peak_memory_bandwidth_bytes_per_s: Option<f64>,
    /// L2 cache size, in bytes.
    pub l2_cache_bytes: u32,
    /// Copy engines that can overlap with kernels.
    pub async_engine_count: u32,
    /// ECC is enabled on device memory.
    pub ecc_enabled: bool,
    /// Launch limits.
    pub limits: Limits,
}

impl DeviceInfo {
    /// Peak bandwidth in GB/s (10^9 bytes), if known.
    pub fn peak_memory_bandwidth_gbs(&self) -> Option<f64> {
        self.peak_memory_bandwidth_bytes_per_s.map(|b| b / 1e9)
    }
}

/// 2 (double data rate) × memory clock × bus width; `None` when the driver reports zero.
pub fn peak_bandwidth(memory_clock_khz: u32, bus_width_bits: u32) -> Option<f64> {
    if memory_clock_khz == 0 || bus_width_bits == 0 {
        return None;
    }
    Some(2.0 * f64::from(memory_clock_khz) * 1e3 * f64::from(bus_width_bits) / 8.0)
}

impl Device {
    /// Number of CUDA devices.
    pub fn count() -> Result<u32> {
        init()?;
        let mut n: c_int = 0;
        // SAFETY: `n` is a valid out-pointer.
        unsafe { sys::cuDeviceGetCount(&mut n) }.ok("cuDeviceGetCount")?;
        Ok(u32::try_from(n).unwrap_or(0))
    }

    /// The device with this ordinal.
    pub fn get(ordinal: u32) -> Result<Self> {
        let count = Self::count()?;
        if ordinal >= count {
            return Err(Error::InvalidDevice { ordinal, count });
        }
        let mut raw: sys::CUdevice = 0;
        let ord = c_int::try_from(ordinal).map_err(|_| Error::InvalidDevice { ordinal, count })?;
        // SAFETY: `raw` is a valid out-pointer; the ordinal was checked against the count.
        unsafe { sys::cuDeviceGet(&mut raw, ord) }.ok("cuDeviceGet")?;
        Ok(Self { ordinal, raw })
    }

    /// Every device, in ordinal order.
    pub fn all() -> Result<Vec<Self>> {
        (0..Self::count()?).map(Self::get).collect()
    }

    /// The CUDA ordinal.
    pub fn ordinal(&self) -> u32 {
        self.ordinal
    }

    pub(crate) fn raw(&self) -> sys::CUdevice {
        self.raw
    }

    /// Marketing name, e.g. `NVIDIA H200`.
    pub fn name(&self) -> Result<String> {
        let mut buf = [0 as c_char; 256];
        // SAFETY: the buffer holds `len` bytes; the driver NUL-terminates within it.
        unsafe { sys::cuDeviceGetName(buf.as_mut_ptr(), buf.len() as c_int, self.raw) }
            .ok("cuDeviceGetName")?;
        Ok(c_chars_to_string(&buf))
    }

    /// Device memory, in bytes.
    pub fn total_memory(&self) -> Result<u64> {
        let mut bytes = 0usize;
        // SAFETY: `bytes` is a valid out-pointer.
        unsafe { sys::cuDeviceTotalMem_v2(&mut bytes, self.raw) }.ok("cuDeviceTotalMem")?;
        Ok(bytes as u64)
    }

    /// A raw `CU_DEVICE_ATTRIBUTE_*` value.
    pub fn attribute(&self, attribute: i32) -> Result<i32> {
        let mut v: c_int = 0;
        // SAFETY: `v` is a valid out-pointer; unknown attributes are rejected by the driver.
        unsafe { sys::cuDeviceGetAttribute(&mut v, attribute, self.raw) }
            .ok("cuDeviceGetAttribute")?;
        Ok(v)
    }

    fn attr_u32(&self, attribute: i32) -> Result<u32> {
        Ok(u32::try_from(self.attribute(attribute)?).unwrap_or(0))
    }

    /// Compute capability (major, minor).
    pub fn compute_capability(&self) -> Result<(u32, u32)> {
        Ok((
            self.attr_u32(sys::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)?,
            self.attr_u32(sys::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR)?,
        ))
    }

    /// Where the device is on the PCI bus (joins CUDA devices with vm-pci's).
    pub fn pci_location(&self) -> Result<PciLocation> {
        Ok(PciLocation {
            domain: self.attr_u32(sys::CU_DEVICE_ATTRIBUTE_PCI_DOMAIN_ID)?,
            bus: self.attr_u32(sys::CU_DEVICE_ATTRIBUTE_PCI_BUS_ID)? as u8,
            device: self.attr_u32(sys::CU_DEVICE_ATTRIBUTE_PCI_DEVICE_ID)? as u8,
        })
    }

    /// The UUID (`GPU-...`), or `None` where the driver does not support the query.
    pub fn uuid(&self) -> Result<Option<String>> {
        let mut u = sys::CUuuid { bytes: [0; 16] };
        // SAFETY: `u` is a valid out-pointer to a 16-byte CUuuid.
        let r = unsafe { sys::cuDeviceGetUuid_v2(&mut u, self.raw) };
        match r.ok("cuDeviceGetUuid") {
            Ok(()) => Ok(Some(format_uuid(&u.bytes.map(|b| b as u8)))),
            // CUDA_ERROR_NOT_SUPPORTED
            Err(Error::Driver {
                code: DriverCode(801),
                ..
            }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Launch limits of the device.
    pub fn limits(&self) -> Result<Limits> {
        use sys::*;
        Ok(Limits {
            max_threads_per_block: self.attr_u32(CU_DEVICE_ATTRIBUTE_MAX_THREADS_PER_BLOCK)?,
            max_block_dim: [
                self.attr_u32(CU_DEVICE_ATTRIBUTE_MAX_BLOCK_DIM_X)?,
                self.attr_u32(CU_DEVICE_ATTRIBUTE_MAX_BLOCK_DIM_Y)?,
                self.attr_u32(CU_DEVICE_ATTRIBUTE_MAX_BLOCK_DIM_Z)?,
            ],
            max_grid_dim: [
                self.attr_u32(CU_DEVICE_ATTRIBUTE_MAX_GRID_DIM_X)?,
                self.attr_u32(CU_DEVICE_ATTRIBUTE_MAX_GRID_DIM_Y)?,
                self.attr_u32(CU_DEVICE_ATTRIBUTE_MAX_GRID_DIM_Z)?,
            ],
            max_shared_per_block: self.attr_u32(CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK)?,
            max_shared_per_block_optin: self
                .attr_u32(CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN)?,
            warp_size: self.attr_u32(CU_DEVICE_ATTRIBUTE_WARP_SIZE)?,
        })
    }

    /// Everything about the device in one struct.
    pub fn info(&self) -> Result<DeviceInfo> {
        use sys::*;
        let pci = self.pci_location()?;
        let memory_clock_khz = self.attr_u32(CU_DEVICE_ATTRIBUTE_MEMORY_CLOCK_RATE)?;
        let memory_bus_width_bits = self.attr_u32(CU_DEVICE_ATTRIBUTE_GLOBAL_MEMORY_BUS_WIDTH)?;
        Ok(DeviceInfo {
            ordinal: self.ordinal,
            name: self.name()?,
            uuid: self.uuid()?,
            pci,
            pci_bdf: pci.to_string(),
            total_memory_bytes: self.total_memory()?,
            compute_capability: self.compute_capability()?,
            sm_count: self.attr_u32(CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)?,
            clock_khz: self.attr_u32(CU_DEVICE_ATTRIBUTE_CLOCK_RATE)?,
            memory_clock_khz,
            memory_bus_width_bits,
            peak_memory_bandwidth_bytes_per_s: peak_bandwidth(
                memory_clock_khz,
                memory_bus_width_bits,
            ),
            l2_cache_bytes: self.attr_u32(CU_DEVICE_ATTRIBUTE_L2_CACHE_SIZE)?,
            async_engine_count: self.attr_u32(CU_DEVICE_ATTRIBUTE_ASYNC_ENGINE_COUNT)?,
            ecc_enabled: self.attr_u32(CU_DEVICE_ATTRIBUTE_ECC_ENABLED)? != 0,
            limits: self.limits()?,
        })
    }
}

fn c_chars_to_string(buf: &[c_char]) -> String {
    let bytes: Vec<u8> = buf
        .iter()
        .map(|&c| c as u8)
        .take_while(|&b| b != 0)
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// nvidia-smi's form: `GPU-` + 8-4-4-4-12 lowercase hex.
pub fn format_uuid(b: &[u8; 16]) -> String {
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "GPU-{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peak_bandwidth_of_known_gpus() {
        // H100 SXM: 2619 MHz HBM3 on a 5120-bit bus = 3.35 TB/s.
        let h100 = peak_bandwidth(2_619_000, 5120).expect("known");
        assert!((h100 / 1e12 - 3.352).abs() < 0.01, "{h100}");
        assert_eq!(peak_bandwidth(0, 5120), None);
    }

    #[test]
    fn formats_uuid_and_pci_location() {
        let b: [u8; 16] = std::array::from_fn(|i| i as u8 * 17);
        assert_eq!(format_uuid(&b), "GPU-00112233-4455-6677-8899-aabbccddeeff");
        let p = PciLocation {
            domain: 0,
            bus: 0x41,
            device: 6,
        };
        assert_eq!(p.to_string(), "0000:41:06.0");
    }
}
