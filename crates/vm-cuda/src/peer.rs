//! Peer access between GPUs: who can reach whom (and how well), enabling access, and the
//! topology the driver reports.
//!
//! Peer *copies* are on [`crate::DeviceBuffer`] (`copy_from_peer*`). Access is directional
//! ("a context of `a` may map memory of `b`"); [`Context::enable_peer_access`] enables one
//! direction and is idempotent.
//!
//! The driver API does not name the link. [`LinkKind`] is inferred: peers with native
//! atomics are joined by NVLink (PCIe peer-to-peer has no native atomics between GPUs),
//! peers with access but without them by PCIe. The measured bandwidth of `check --all`
//! confirms it.

use std::ffi::c_int;

use crate::context::Context;
use crate::device::Device;
use crate::error::{DriverCode, Result};
use crate::sys;

/// How two GPUs reach each other, as far as the driver API tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LinkKind {
    /// Peer access with native atomics (inferred: NVLink / NVSwitch).
    Nvlink,
    /// Peer access without native atomics (inferred: PCIe peer-to-peer).
    Pcie,
    /// No peer access: copies go through host memory.
    None,
}

/// The driver's peer-to-peer attributes from `src` to `dst`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct PeerLink {
    /// Ordinal of the accessing GPU.
    pub src: u32,
    /// Ordinal of the GPU whose memory is accessed.
    pub dst: u32,
    /// `CU_DEVICE_P2P_ATTRIBUTE_ACCESS_SUPPORTED` (and `cuDeviceCanAccessPeer`).
    pub access_supported: bool,
    /// `CU_DEVICE_P2P_ATTRIBUTE_NATIVE_ATOMIC_SUPPORTED`.
    pub native_atomics: bool,
    /// `CU_DEVICE_P2P_ATTRIBUTE_PERFORMANCE_RANK`: relative, lower is better (0 = best).
    pub performance_rank: i32,
    /// What joins them (`kind` in JSON: `link` is an object in every document).
    #[serde(rename = "kind")]
    pub link: LinkKind,
}

impl LinkKind {
    /// The inference described in the module docs.
    pub fn infer(access_supported: bool, native_atomics: bool) -> Self {
        match (access_supported, native_atomics) {
            (false, _) => Self::None,
            (true, true) => Self::Nvlink,
            (true, false) => Self::Pcie,
        }
    }
}

impl Device {
    /// Whether a context on this device can access memory of `peer`.
    pub fn can_access_peer(&self, peer: &Device) -> Result<bool> {
        let mut can: c_int = 0;
        // SAFETY: valid out-pointer; both handles came from cuDeviceGet.
        unsafe { sys::cuDeviceCanAccessPeer(&mut can, self.raw(), peer.raw()) }
            .ok("cuDeviceCanAccessPeer")?;
        Ok(can != 0)
    }

    fn p2p_attribute(&self, peer: &Device, attribute: c_int) -> Result<i32> {
        let mut v: c_int = 0;
        // SAFETY: valid out-pointer; both handles came from cuDeviceGet.
        unsafe { sys::cuDeviceGetP2PAttribute(&mut v, attribute, self.raw(), peer.raw()) }
            .ok("cuDeviceGetP2PAttribute")?;
        Ok(v)
    }

    /// The peer attributes from this device to `peer` (`peer` must be another device).
    pub fn peer_link(&self, peer: &Device) -> Result<PeerLink> {
        let access = self.can_access_peer(peer)?
            && self.p2p_attribute(peer, sys::CU_DEVICE_P2P_ATTRIBUTE_ACCESS_SUPPORTED)? != 0;
        let atomics =
            self.p2p_attribute(peer, sys::CU_DEVICE_P2P_ATTRIBUTE_NATIVE_ATOMIC_SUPPORTED)? != 0;
        Ok(PeerLink {
            src: self.ordinal(),
            dst: peer.ordinal(),
            access_supported: access,
            native_atomics: atomics,
            performance_rank: self
                .p2p_attribute(peer, sys::CU_DEVICE_P2P_ATTRIBUTE_PERFORMANCE_RANK)?,
            link: LinkKind::infer(access, atomics),
        })
    }
}

/// Peer attributes of every ordered pair of distinct devices (empty with one GPU).
pub fn topology() -> Result<Vec<PeerLink>> {
    let devices = Device::all()?;
    let mut links = Vec::new();
    for a in &devices {
        for b in &devices {
            if a != b {
                links.push(a.peer_link(b)?);
            }
        }
    }
    Ok(links)
}

impl Context {
    /// Lets this context access memory of `peer`'s context (one direction). Already enabled
    /// is success; a pair without peer support is `CUDA_ERROR_PEER_ACCESS_UNSUPPORTED`.
    pub fn enable_peer_access(&self, peer: &Context) -> Result<()> {
        self.make_current()?;
        // SAFETY: `peer` is a retained live context; flags must be 0.
        let r = unsafe { sys::cuCtxEnablePeerAccess(peer.as_raw(), 0) };
        if r.0 as u32 == DriverCode::PEER_ACCESS_ALREADY_ENABLED.0 {
            return Ok(());
        }
        r.ok("cuCtxEnablePeerAccess")
    }

    /// Revokes access enabled by [`Self::enable_peer_access`]. Not enabled is success.
    pub fn disable_peer_access(&self, peer: &Context) -> Result<()> {
        self.make_current()?;
        // SAFETY: `peer` is a retained live context.
        let r = unsafe { sys::cuCtxDisablePeerAccess(peer.as_raw()) };
        if r.0 as u32 == DriverCode::PEER_ACCESS_NOT_ENABLED.0 {
            return Ok(());
        }
        r.ok("cuCtxDisablePeerAccess")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_inference() {
        assert_eq!(LinkKind::infer(true, true), LinkKind::Nvlink);
        assert_eq!(LinkKind::infer(true, false), LinkKind::Pcie);
        assert_eq!(LinkKind::infer(false, true), LinkKind::None);
        assert_eq!(LinkKind::infer(false, false), LinkKind::None);
        assert_eq!(
            serde_json::to_value(LinkKind::Nvlink).unwrap(),
            serde_json::json!("nvlink")
        );
    }
}
