//! PCI addresses: `domain:bus:device.function`.

use std::fmt;
use std::str::FromStr;

/// A PCI function address. Construction checks the field ranges (device < 32, function < 8),
/// so every `Bdf` value names a function that can exist.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Bdf {
    domain: u32,
    bus: u8,
    device: u8,
    function: u8,
}

/// Why a string is not a PCI address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid PCI address {input:?}: {reason} (expected DDDD:BB:DD.F, e.g. 0000:00:06.0)")]
pub struct BdfParseError {
    input: String,
    reason: &'static str,
}

impl Bdf {
    /// Builds an address; `None` when device >= 32 or function >= 8.
    pub const fn new(domain: u32, bus: u8, device: u8, function: u8) -> Option<Bdf> {
        if device >= 32 || function >= 8 {
            return None;
        }
        Some(Bdf {
            domain,
            bus,
            device,
            function,
        })
    }
    /// PCI domain (segment).
    pub const fn domain(self) -> u32 {
        self.domain
    }
    /// Bus number.
    pub const fn bus(self) -> u8 {
        self.bus
    }
    /// Device (slot) number, 0..=31.
    pub const fn device(self) -> u8 {
        self.device
    }
    /// Function number, 0..=7.
    pub const fn function(self) -> u8 {
        self.function
    }
    /// The same device's function 0 (the one that carries multi-function headers).
    pub const fn function0(self) -> Bdf {
        Bdf {
            function: 0,
            ..self
        }
    }
}

impl fmt::Display for Bdf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:04x}:{:02x}:{:02x}.{:x}",
            self.domain, self.bus, self.device, self.function
        )
    }
}

fn hex_field<T>(
    s: &str,
    max_len: usize,
    input: &str,
    what: &'static str,
) -> Result<T, BdfParseError>
where
    T: TryFrom<u32>,
{
    let err = |reason| BdfParseError {
        input: input.to_string(),
        reason,
    };
    if s.is_empty() || s.len() > max_len || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(err(what));
    }
    let v = u32::from_str_radix(s, 16).map_err(|_| err(what))?;
    T::try_from(v).map_err(|_| err(what))
}

impl FromStr for Bdf {
    type Err = BdfParseError;

    /// Accepts `DDDD:BB:DD.F` and the short `BB:DD.F` (domain 0), as lspci prints them.
    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let err = |reason| BdfParseError {
            input: input.to_string(),
            reason,
        };
        let (rest, func) = input
            .rsplit_once('.')
            .ok_or_else(|| err("missing '.function'"))?;
        let parts: Vec<&str> = rest.split(':').collect();
        let (domain, bus, dev) = match parts.as_slice() {
            [d, b, v] => (hex_field::<u32>(d, 8, input, "bad domain")?, *b, *v),
            [b, v] => (0, *b, *v),
            _ => return Err(err("expected domain:bus:device")),
        };
        let bus: u8 = hex_field(bus, 2, input, "bad bus")?;
        let device: u8 = hex_field(dev, 2, input, "bad device")?;
        let function: u8 = hex_field(func, 1, input, "bad function")?;
        Bdf::new(domain, bus, device, function).ok_or_else(|| {
            err(if device >= 32 {
                "device must be below 0x20"
            } else {
                "function must be below 8"
            })
        })
    }
}

impl serde::Serialize for Bdf {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Bdf {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_and_formats() {
        let b: Bdf = "0000:00:06.0".parse().unwrap();
        assert_eq!(
            (b.domain(), b.bus(), b.device(), b.function()),
            (0, 0, 6, 0)
        );
        assert_eq!(b.to_string(), "0000:00:06.0");
        let b: Bdf = "3b:1f.7".parse().unwrap();
        assert_eq!(b.to_string(), "0000:3b:1f.7");
        let b: Bdf = "10000:C1:00.1".parse().unwrap();
        assert_eq!(b.to_string(), "10000:c1:00.1");
    }

    #[test]
    fn rejects_malformed() {
        for s in [
            "",
            "0000:00:06",
            "0000:00:20.0",
            "0000:00:06.8",
            "0000:100:06.0",
            "zz:00.0",
            "0000:00:06.0 ",
            "+0:00:06.0",
            "0000::06.0",
            "0:0:0:0.0",
            "123456789:00:00.0",
        ] {
            assert!(s.parse::<Bdf>().is_err(), "{s:?} parsed");
        }
        let e = "0000:00:20.0".parse::<Bdf>().unwrap_err();
        assert!(e.to_string().contains("device must be below 0x20"), "{e}");
    }

    proptest! {
        #[test]
        fn roundtrip(domain in any::<u16>(), bus in any::<u8>(), dev in 0u8..32, func in 0u8..8) {
            let b = Bdf::new(domain.into(), bus, dev, func).unwrap();
            prop_assert_eq!(b.to_string().parse::<Bdf>().unwrap(), b);
        }

        #[test]
        fn arbitrary_strings_never_panic(s in ".{0,24}") {
            if let Ok(b) = s.parse::<Bdf>() {
                // Whatever parses formats back to something that parses to the same address.
                prop_assert_eq!(b.to_string().parse::<Bdf>().unwrap(), b);
            }
        }
    }
}
