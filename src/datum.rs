//! SQL values passed through eventq as Postgres datums.
//!
//! Payloads and headers are never parsed into Rust: converting them through serde would cost
//! more than the rest of a publish. The types here hold a datum, map to their SQL type, and
//! are copied (detoasted) only where a value read by SPI has to outlive the SPI call.

use pgrx::callconv::{ArgAbi, BoxRet};
use pgrx::datum::{FromDatum, IntoDatum};
use pgrx::memcxt::PgMemoryContexts;
use pgrx::pg_sys;
use pgrx::pgrx_sql_entity_graph::metadata::{
    ArgumentError, ReturnsError, ReturnsRef, SqlMappingRef, SqlTranslatable, TypeOrigin,
};

macro_rules! raw_datum {
    ($(#[$doc:meta])* $name:ident, $sql:literal, $oid:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy)]
        pub struct $name(pg_sys::Datum);

        impl FromDatum for $name {
            unsafe fn from_polymorphic_datum(
                datum: pg_sys::Datum,
                is_null: bool,
                _typoid: pg_sys::Oid,
            ) -> Option<Self> {
                (!is_null).then_some($name(datum))
            }

            unsafe fn from_datum_in_memory_context(
                mut memory_context: PgMemoryContexts,
                datum: pg_sys::Datum,
                is_null: bool,
                _typoid: pg_sys::Oid,
            ) -> Option<Self> {
                if is_null {
                    return None;
                }
                memory_context.switch_to(|_| unsafe {
                    let copy = pg_sys::pg_detoast_datum_copy(datum.cast_mut_ptr());
                    Some($name(pg_sys::Datum::from(copy)))
                })
            }
        }

        impl IntoDatum for $name {
            fn into_datum(self) -> Option<pg_sys::Datum> {
                Some(self.0)
            }

            fn type_oid() -> pg_sys::Oid {
                $oid
            }
        }

        unsafe impl SqlTranslatable for $name {
            const TYPE_IDENT: &'static str = concat!(module_path!(), "::", stringify!($name));
            const TYPE_ORIGIN: TypeOrigin = TypeOrigin::External;
            const ARGUMENT_SQL: Result<SqlMappingRef, ArgumentError> =
                Ok(SqlMappingRef::literal($sql));
            const RETURN_SQL: Result<ReturnsRef, ReturnsError> =
                Ok(ReturnsRef::One(SqlMappingRef::literal($sql)));
        }

        unsafe impl<'fcx> ArgAbi<'fcx> for $name {
            unsafe fn unbox_arg_unchecked(arg: pgrx::callconv::Arg<'_, 'fcx>) -> Self {
                // pgrx only unboxes non-null arguments here: nullable ones are `Option<_>`.
                match unsafe { arg.unbox_arg_using_from_datum::<Self>() } {
                    Some(value) => value,
                    None => unreachable!("a NULL argument was unboxed as non-null"),
                }
            }
        }

        unsafe impl BoxRet for $name {
            unsafe fn box_into<'fcx>(
                self,
                fcinfo: &mut pgrx::callconv::FcInfo<'fcx>,
            ) -> pgrx::datum::Datum<'fcx> {
                unsafe { fcinfo.return_raw_datum(self.0) }
            }
        }
    };
}

raw_datum!(
    /// A `jsonb` value.
    Jsonb,
    "jsonb",
    pg_sys::JSONBOID
);
raw_datum!(
    /// A `jsonb[]` value.
    JsonbArray,
    "jsonb[]",
    pg_sys::JSONBARRAYOID
);
raw_datum!(
    /// A `text[]` value.
    TextArray,
    "text[]",
    pg_sys::TEXTARRAYOID
);

impl Jsonb {
    /// The value's size uncompressed, without detoasting it.
    pub fn raw_size(self) -> usize {
        unsafe { pg_sys::toast_raw_datum_size(self.0) }
    }

    /// Whether the value is a JSON object (`{...}`), read from the container header without
    /// parsing the document.
    pub fn is_object(self) -> bool {
        unsafe {
            // SAFETY: the datum is a valid jsonb varlena; detoasting yields a complete `Jsonb`
            // whose root container header carries the kind flags.
            let jb = pg_sys::pg_detoast_datum(self.0.cast_mut_ptr()) as *const pg_sys::Jsonb;
            (*jb).root.header & pg_sys::JB_FOBJECT != 0
        }
    }
}

/// Shape of an array argument.
pub struct ArrayShape {
    pub dimensions: i32,
    pub len: usize,
}

fn array_shape(datum: pg_sys::Datum) -> ArrayShape {
    unsafe {
        // SAFETY: callers hold an array datum of the declared type; the dimensions follow the
        // fixed-size `ArrayType` header.
        let array = pg_sys::pg_detoast_datum(datum.cast_mut_ptr()) as *mut pg_sys::ArrayType;
        let ndim = (*array).ndim;
        let dims = (array as *const u8).add(std::mem::size_of::<pg_sys::ArrayType>()) as *mut i32;
        ArrayShape { dimensions: ndim, len: pg_sys::ArrayGetNItems(ndim, dims) as usize }
    }
}

/// The elements of an array of a varlena type (`text`, `jsonb`), NULL as `None`.
fn varlena_elements(datum: pg_sys::Datum, element_type: pg_sys::Oid) -> Vec<Option<pg_sys::Datum>> {
    unsafe {
        // SAFETY: `datum` is an array of `element_type`, a 4-byte-aligned varlena type.
        let array = pg_sys::pg_detoast_datum(datum.cast_mut_ptr()) as *mut pg_sys::ArrayType;
        let mut values: *mut pg_sys::Datum = std::ptr::null_mut();
        let mut nulls: *mut bool = std::ptr::null_mut();
        let mut n: i32 = 0;
        pg_sys::deconstruct_array(
            array,
            element_type,
            -1,
            false,
            pg_sys::TYPALIGN_INT as std::ffi::c_char,
            &mut values,
            &mut nulls,
            &mut n,
        );
        (0..n as usize).map(|i| (!*nulls.add(i)).then(|| *values.add(i))).collect()
    }
}

impl JsonbArray {
    pub fn shape(self) -> ArrayShape {
        array_shape(self.0)
    }

    pub fn elements(self) -> Vec<Option<Jsonb>> {
        varlena_elements(self.0, pg_sys::JSONBOID).into_iter().map(|d| d.map(Jsonb)).collect()
    }
}

impl TextArray {
    pub fn shape(self) -> ArrayShape {
        array_shape(self.0)
    }

    pub fn elements(self) -> Vec<Option<String>> {
        varlena_elements(self.0, pg_sys::TEXTOID)
            .into_iter()
            .map(|d| d.and_then(|d| unsafe { String::from_datum(d, false) }))
            .collect()
    }
}
