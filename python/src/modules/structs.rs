//! `struct`, written here in Rust (the interpreter built this small has no
//! `_struct`): `pack`, `unpack`, `unpack_from`, `iter_unpack`, `calcsize`
//! and `error`, for the byte orders `@ = < > !` and the format characters
//! `x c b B ? h H i I l L q Q n N e f d s p`, as CPython has them on a
//! 64-bit little-endian Linux, and a `Struct` class over them. A bad format
//! or value raises `struct.error`. No `pack_into` (it writes into a buffer).

use std::cell::RefCell;

use rustpython_vm::builtins::{PyBaseExceptionRef, PyBytes, PyStr, PyTypeRef};
use rustpython_vm::function::{ArgBytesLike, FuncArgs};
use rustpython_vm::{AsObject, PyObjectRef, PyResult, TryFromObject, VirtualMachine};

thread_local! {
    /// `struct.error`, made with the module.
    static ERROR: RefCell<Option<PyTypeRef>> = const { RefCell::new(None) };
}

/// The largest struct a format may describe (CPython's is `isize::MAX`;
/// a handler's memory cap is far below this anyway).
const SIZE_MAX: usize = isize::MAX as usize;

/// `Struct`, in Python over the functions.
const STRUCT: &str = r#"
class Struct:
    """A format, checked once: Struct(format).pack(...), .unpack(buffer)..."""
    __slots__ = ("format", "size")
    def __init__(self, format):
        self.size = calcsize(format)
        self.format = format if isinstance(format, str) else format.decode()
    def pack(self, *values):
        return pack(self.format, *values)
    def unpack(self, buffer):
        return unpack(self.format, buffer)
    def unpack_from(self, buffer, offset=0):
        return unpack_from(self.format, buffer, offset)
    def iter_unpack(self, buffer):
        return iter_unpack(self.format, buffer)
    def __repr__(self):
        return "Struct(%r)" % self.format
"#;

pub(super) fn module(vm: &VirtualMachine) -> PyResult<PyObjectRef> {
    let error = vm.ctx.new_exception_type("struct", "error", None);
    ERROR.with(|e| *e.borrow_mut() = Some(error.clone()));
    let dict = vm.ctx.new_dict();
    let items: [(&str, PyObjectRef); 6] = [
        ("error", error.into()),
        ("pack", vm.new_function("pack", pack).into()),
        ("unpack", vm.new_function("unpack", unpack).into()),
        (
            "unpack_from",
            vm.new_function("unpack_from", unpack_from).into(),
        ),
        (
            "iter_unpack",
            vm.new_function("iter_unpack", iter_unpack).into(),
        ),
        ("calcsize", vm.new_function("calcsize", calcsize).into()),
    ];
    for (name, value) in items {
        dict.set_item(name, value, vm)?;
    }
    super::run_in(vm, "struct", STRUCT, &dict)?;
    Ok(vm.new_module("struct", dict, None).into())
}

fn error(vm: &VirtualMachine, message: impl Into<String>) -> PyBaseExceptionRef {
    let message = message.into();
    match ERROR.with(|e| e.borrow().clone()) {
        Some(error) => vm.new_exception_msg(error, message.into()),
        None => vm.new_value_error(message),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Order {
    Little,
    Big,
}

/// One format character with its repeat count (for `s` and `p`, its length).
#[derive(Debug, Clone, Copy)]
struct Item {
    code: u8,
    count: usize,
    /// Where the first of them starts.
    offset: usize,
    size: usize,
}

/// A parsed format.
#[derive(Debug)]
struct Format {
    order: Order,
    items: Vec<Item>,
    size: usize,
}

impl Format {
    /// How many values the format packs or unpacks.
    fn values(&self) -> usize {
        self.items
            .iter()
            .map(|i| match i.code {
                b'x' => 0,
                b's' | b'p' => 1,
                _ => i.count,
            })
            .sum()
    }
}

fn format_arg(format: &PyObjectRef, vm: &VirtualMachine) -> PyResult<Vec<u8>> {
    if let Some(s) = format.downcast_ref::<PyStr>() {
        Ok(s.to_string_lossy().as_bytes().to_vec())
    } else if let Some(b) = format.downcast_ref::<PyBytes>() {
        Ok(b.as_bytes().to_vec())
    } else {
        Err(vm.new_type_error(format!(
            "Struct() argument 1 must be a str or bytes object, not {}",
            format.class().name()
        )))
    }
}

/// The size and alignment of `code`, or `None` if it is no format character.
fn size_of(code: u8, native: bool) -> Option<(usize, usize)> {
    let size = match code {
        b'x' | b'c' | b'b' | b'B' | b'?' | b's' | b'p' => 1,
        b'h' | b'H' | b'e' => 2,
        b'i' | b'I' | b'f' => 4,
        b'l' | b'L' if native => std::mem::size_of::<libc::c_long>(),
        b'l' | b'L' => 4,
        b'q' | b'Q' | b'd' => 8,
        b'n' | b'N' if native => std::mem::size_of::<isize>(),
        _ => return None,
    };
    Some((size, if native { size } else { 1 }))
}

fn parse(format: &[u8], vm: &VirtualMachine) -> PyResult<Format> {
    let native_order = if cfg!(target_endian = "big") {
        Order::Big
    } else {
        Order::Little
    };
    let (order, native, rest) = match format.first() {
        Some(b'@') => (native_order, true, &format[1..]),
        Some(b'=') => (native_order, false, &format[1..]),
        Some(b'<') => (Order::Little, false, &format[1..]),
        Some(b'>') | Some(b'!') => (Order::Big, false, &format[1..]),
        _ => (native_order, true, format),
    };
    let too_long = || error(vm, "total struct size too long");
    let mut items = Vec::new();
    let mut size = 0usize;
    let mut i = 0;
    while i < rest.len() {
        let c = rest[i];
        if c.is_ascii_whitespace() {
            i += 1;
            continue;
        }
        let mut count = None;
        while let Some(d) = rest.get(i).filter(|d| d.is_ascii_digit()) {
            let so_far: usize = count.unwrap_or(0);
            count = Some(
                so_far
                    .checked_mul(10)
                    .and_then(|n| n.checked_add(usize::from(d - b'0')))
                    .filter(|n| *n <= SIZE_MAX)
                    .ok_or_else(too_long)?,
            );
            i += 1;
        }
        let Some(&code) = rest.get(i) else {
            return Err(error(vm, "repeat count given without format specifier"));
        };
        i += 1;
        let (item_size, align) =
            size_of(code, native).ok_or_else(|| error(vm, "bad char in struct format"))?;
        let count = count.unwrap_or(1);
        if align > 1 {
            size = size.checked_next_multiple_of(align).ok_or_else(too_long)?;
        }
        let bytes = item_size
            .checked_mul(count)
            .filter(|n| *n <= SIZE_MAX)
            .ok_or_else(too_long)?;
        items.push(Item {
            code,
            count,
            offset: size,
            size: item_size,
        });
        size = size
            .checked_add(bytes)
            .filter(|n| *n <= SIZE_MAX)
            .ok_or_else(too_long)?;
    }
    Ok(Format { order, items, size })
}

/// `calcsize(format)`.
fn calcsize(format: PyObjectRef, vm: &VirtualMachine) -> PyResult<usize> {
    Ok(parse(&format_arg(&format, vm)?, vm)?.size)
}

/// `pack(format, v1, v2, ...)`.
fn pack(args: FuncArgs, vm: &VirtualMachine) -> PyResult<PyObjectRef> {
    if !args.kwargs.is_empty() {
        return Err(vm.new_type_error("pack() takes no keyword arguments"));
    }
    let mut args = args.args.into_iter();
    let format = args
        .next()
        .ok_or_else(|| vm.new_type_error("pack expected at least 1 argument, got 0"))?;
    let format = parse(&format_arg(&format, vm)?, vm)?;
    let values: Vec<PyObjectRef> = args.collect();
    if values.len() != format.values() {
        return Err(error(
            vm,
            format!(
                "pack expected {} items for packing (got {})",
                format.values(),
                values.len()
            ),
        ));
    }
    let mut out = vec![0u8; format.size];
    let mut values = values.into_iter();
    for item in &format.items {
        match item.code {
            b'x' => {}
            b's' | b'p' => {
                let value = values.next().expect("counted above");
                let data = value.downcast_ref::<PyBytes>().ok_or_else(|| {
                    error(
                        vm,
                        format!(
                            "argument for '{}' must be a bytes object",
                            item.code as char
                        ),
                    )
                })?;
                let data = data.as_bytes();
                let field = &mut out[item.offset..item.offset + item.count];
                if item.code == b's' {
                    let n = data.len().min(item.count);
                    field[..n].copy_from_slice(&data[..n]);
                } else if let Some((length, rest)) = field.split_first_mut() {
                    let n = data.len().min(rest.len()).min(255);
                    *length = n as u8;
                    rest[..n].copy_from_slice(&data[..n]);
                }
            }
            _ => {
                for k in 0..item.count {
                    let value = values.next().expect("counted above");
                    let at = item.offset + k * item.size;
                    pack_one(
                        item.code,
                        &value,
                        format.order,
                        &mut out[at..at + item.size],
                        vm,
                    )?;
                }
            }
        }
    }
    Ok(vm.ctx.new_bytes(out).into())
}

fn pack_one(
    code: u8,
    value: &PyObjectRef,
    order: Order,
    out: &mut [u8],
    vm: &VirtualMachine,
) -> PyResult<()> {
    let put = |out: &mut [u8], bytes: &[u8]| {
        // `bytes` is little-endian, as long as `out`.
        out.copy_from_slice(bytes);
        if order == Order::Big {
            out.reverse();
        }
    };
    match code {
        b'c' => match value.downcast_ref::<PyBytes>() {
            Some(b) if b.as_bytes().len() == 1 => out[0] = b.as_bytes()[0],
            _ => return Err(error(vm, "char format requires a bytes object of length 1")),
        },
        b'?' => out[0] = u8::from(value.clone().is_true(vm)?),
        b'e' | b'f' | b'd' => {
            let x = float_arg(value, vm)?;
            match code {
                b'e' => put(
                    out,
                    &to_half(x)
                        .ok_or_else(|| {
                            vm.new_overflow_error("float too large to pack with e format")
                        })?
                        .to_le_bytes(),
                ),
                b'f' => {
                    let y = x as f32;
                    if y.is_infinite() && x.is_finite() {
                        return Err(vm.new_overflow_error("float too large to pack with f format"));
                    }
                    put(out, &y.to_le_bytes())
                }
                _ => put(out, &x.to_le_bytes()),
            }
        }
        _ => {
            let n = int_arg(value, vm)?;
            let signed = matches!(code, b'b' | b'h' | b'i' | b'l' | b'q' | b'n');
            let bits = out.len() * 8;
            let (min, max) = if signed {
                (-(1i128 << (bits - 1)), (1i128 << (bits - 1)) - 1)
            } else {
                (0, (1i128 << bits) - 1)
            };
            match n {
                Some(n) if (min..=max).contains(&n) => put(out, &n.to_le_bytes()[..out.len()]),
                _ if code == b'b' || code == b'B' => {
                    return Err(error(
                        vm,
                        format!("byte format requires {min} <= number <= {max}"),
                    ));
                }
                _ if bits == 64 => return Err(error(vm, "argument out of range")),
                _ => {
                    return Err(error(
                        vm,
                        format!(
                            "'{}' format requires {min} <= number <= {max}",
                            code as char
                        ),
                    ));
                }
            }
        }
    }
    Ok(())
}

/// An integer to pack: `None` when it is beyond any format's range.
fn int_arg(value: &PyObjectRef, vm: &VirtualMachine) -> PyResult<Option<i128>> {
    let Some(int) = value.try_index_opt(vm) else {
        return Err(error(vm, "required argument is not an integer"));
    };
    Ok(int?.try_to_primitive::<i128>(vm).ok())
}

fn float_arg(value: &PyObjectRef, vm: &VirtualMachine) -> PyResult<f64> {
    value
        .try_float(vm)
        .map(|f| f.to_f64())
        .map_err(|_| error(vm, "required argument is not a float"))
}

/// `x` as an IEEE 754 half (round half to even), or `None` if it is too
/// large for one.
fn to_half(x: f64) -> Option<u16> {
    let sign: u16 = if x.is_sign_negative() { 0x8000 } else { 0 };
    if x.is_nan() {
        return Some(sign | 0x7e00);
    }
    let a = x.abs();
    if a.is_infinite() {
        return Some(sign | 0x7c00);
    }
    // Smallest subnormal half: 2^-24. Work in units of it below 2^-14.
    if a < 2f64.powi(-14) {
        let units = round_even(a * 2f64.powi(24));
        // 1024 units is the smallest normal, which is the right encoding too.
        return Some(sign | units as u16);
    }
    let exp = a.log2().floor() as i32;
    // Guard against log2's rounding at powers of two.
    let exp = if 2f64.powi(exp) > a {
        exp - 1
    } else if 2f64.powi(exp + 1) <= a {
        exp + 1
    } else {
        exp
    };
    let mut mantissa = round_even((a / 2f64.powi(exp) - 1.0) * 1024.0) as u32;
    let mut exp = exp;
    if mantissa == 1024 {
        mantissa = 0;
        exp += 1;
    }
    if exp > 15 {
        return None;
    }
    Some(sign | (((exp + 15) as u16) << 10) | mantissa as u16)
}

fn round_even(x: f64) -> f64 {
    let r = x.round();
    if (x - x.trunc()).abs() == 0.5 && r % 2.0 != 0.0 {
        r - x.signum()
    } else {
        r
    }
}

fn from_half(h: u16) -> f64 {
    let sign = if h & 0x8000 != 0 { -1.0 } else { 1.0 };
    let exp = i32::from((h >> 10) & 0x1f);
    let mantissa = f64::from(h & 0x3ff);
    sign * match exp {
        0 => mantissa * 2f64.powi(-24),
        31 if mantissa == 0.0 => f64::INFINITY,
        31 => f64::NAN,
        _ => (1.0 + mantissa / 1024.0) * 2f64.powi(exp - 15),
    }
}

fn unpack_items(format: &Format, data: &[u8], vm: &VirtualMachine) -> PyObjectRef {
    let mut values = Vec::with_capacity(format.values());
    for item in &format.items {
        match item.code {
            b'x' => {}
            b's' => values.push(
                vm.ctx
                    .new_bytes(data[item.offset..item.offset + item.count].to_vec())
                    .into(),
            ),
            b'p' => {
                let field = &data[item.offset..item.offset + item.count];
                let value = match field.split_first() {
                    Some((&n, rest)) => rest[..usize::from(n).min(rest.len())].to_vec(),
                    None => Vec::new(),
                };
                values.push(vm.ctx.new_bytes(value).into());
            }
            _ => {
                for k in 0..item.count {
                    let at = item.offset + k * item.size;
                    values.push(unpack_one(
                        item.code,
                        &data[at..at + item.size],
                        format.order,
                        vm,
                    ));
                }
            }
        }
    }
    vm.ctx.new_tuple(values).into()
}

fn unpack_one(code: u8, bytes: &[u8], order: Order, vm: &VirtualMachine) -> PyObjectRef {
    let mut le = [0u8; 16];
    le[..bytes.len()].copy_from_slice(bytes);
    if order == Order::Big {
        le[..bytes.len()].reverse();
    }
    let unsigned = u128::from_le_bytes(le);
    let bits = bytes.len() * 8;
    match code {
        b'c' => vm.ctx.new_bytes(vec![le[0]]).into(),
        b'?' => vm.ctx.new_bool(le[0] != 0).into(),
        b'e' => vm
            .ctx
            .new_float(from_half(u16::from_le_bytes([le[0], le[1]])))
            .into(),
        b'f' => vm
            .ctx
            .new_float(f64::from(f32::from_le_bytes([le[0], le[1], le[2], le[3]])))
            .into(),
        b'd' => vm.ctx.new_float(f64::from_bits(unsigned as u64)).into(),
        b'b' | b'h' | b'i' | b'l' | b'q' | b'n' => {
            // Sign-extend from `bits`.
            let shift = 128 - bits;
            vm.ctx
                .new_int(((unsigned << shift) as i128) >> shift)
                .into()
        }
        _ => vm.ctx.new_int(unsigned).into(),
    }
}

/// `unpack(format, buffer)`: the buffer must be exactly the format's size.
fn unpack(format: PyObjectRef, buffer: ArgBytesLike, vm: &VirtualMachine) -> PyResult {
    let format = parse(&format_arg(&format, vm)?, vm)?;
    let data = buffer.borrow_buf();
    if data.len() != format.size {
        return Err(error(
            vm,
            format!("unpack requires a buffer of {} bytes", format.size),
        ));
    }
    Ok(unpack_items(&format, &data, vm))
}

/// `unpack_from(format, buffer, offset=0)`.
fn unpack_from(args: FuncArgs, vm: &VirtualMachine) -> PyResult {
    let FuncArgs {
        args: positional,
        mut kwargs,
    } = args;
    let mut positional = positional.into_iter();
    let mut arg = |name: &str| positional.next().or_else(|| kwargs.swap_remove(name));
    let format = arg("format")
        .ok_or_else(|| vm.new_type_error("unpack_from() missing required argument 'format'"))?;
    let buffer = arg("buffer")
        .ok_or_else(|| vm.new_type_error("unpack_from() missing required argument 'buffer'"))?;
    let offset = arg("offset")
        .map(|o| o.try_into_value::<isize>(vm))
        .transpose()?
        .unwrap_or(0);
    if positional.next().is_some() || !kwargs.is_empty() {
        return Err(vm.new_type_error(
            "unpack_from() takes format, buffer and offset, and no other argument",
        ));
    }
    let buffer = ArgBytesLike::try_from_object(vm, buffer)?;
    let format = parse(&format_arg(&format, vm)?, vm)?;
    let data = buffer.borrow_buf();
    let start = if offset < 0 {
        let back = offset.unsigned_abs();
        if back > data.len() {
            return Err(error(
                vm,
                format!(
                    "offset {offset} out of range for {}-byte buffer",
                    data.len()
                ),
            ));
        }
        data.len() - back
    } else {
        offset.unsigned_abs()
    };
    if data.len() < format.size || data.len() - format.size < start {
        return Err(error(
            vm,
            format!(
                "unpack_from requires a buffer of at least {} bytes for unpacking {} bytes at \
                 offset {start} (actual buffer size is {})",
                start.saturating_add(format.size),
                format.size,
                data.len()
            ),
        ));
    }
    Ok(unpack_items(&format, &data[start..start + format.size], vm))
}

/// `iter_unpack(format, buffer)`: an iterator over the tuples of each
/// format-sized piece of the buffer.
fn iter_unpack(format: PyObjectRef, buffer: ArgBytesLike, vm: &VirtualMachine) -> PyResult {
    let format = parse(&format_arg(&format, vm)?, vm)?;
    if format.size == 0 {
        return Err(error(
            vm,
            "cannot iteratively unpack with a struct of length 0",
        ));
    }
    let data = buffer.borrow_buf();
    if !data.len().is_multiple_of(format.size) {
        return Err(error(
            vm,
            format!(
                "iterative unpacking requires a buffer of a multiple of {} bytes",
                format.size
            ),
        ));
    }
    let tuples: Vec<PyObjectRef> = data
        .chunks_exact(format.size)
        .map(|piece| unpack_items(&format, piece, vm))
        .collect();
    vm.ctx
        .new_list(tuples)
        .as_object()
        .get_iter(vm)
        .map(Into::into)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn halves_round_trip_and_round_to_even() {
        for (x, h) in [
            (1.0, 0x3c00u16),
            (-2.0, 0xc000),
            (65504.0, 0x7bff),
            (0.5, 0x3800),
            (6.103515625e-05, 0x0400),
            (5.960464477539063e-08, 0x0001),
            (0.0, 0x0000),
            (1.0009765625, 0x3c01),
        ] {
            assert_eq!(to_half(x), Some(h), "{x}");
            assert_eq!(from_half(h), x, "{h:#x}");
        }
        // Halfway between 1.0 and 1.0009765625: to the even one.
        assert_eq!(to_half(1.00048828125), Some(0x3c00));
        assert_eq!(to_half(65520.0), None);
        assert_eq!(to_half(f64::INFINITY), Some(0x7c00));
        assert!(from_half(0x7e00).is_nan());
    }
}
