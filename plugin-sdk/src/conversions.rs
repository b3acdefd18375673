//! Conversions between the SDK's types and bindings generated from `wit/plugin.wit`.
//!
//! wit-bindgen (in plugins) and wasmtime's `bindgen!` (in the gateway) generate types of the
//! same shape from the same contract, so one macro serves both sides. The caller brings the
//! generated `types` interface into scope as `wit`.

#[doc(hidden)]
#[macro_export]
macro_rules! __impl_contract_conversions {
    () => {
        $crate::__impl_contract_conversions!(@since_0_3);
        $crate::__impl_contract_conversions!(@record Interest { client_to_target(each), target_to_client(each), stateless, prescreen(opt) });
        $crate::__impl_contract_conversions!(@record Prescreen { kinds(each), patterns });
    };
    // What 0.4.0 kept of 0.3.0: everything but the interest.
    (@since_0_3) => {
        $crate::__impl_contract_conversions!(@shared);
        $crate::__impl_contract_conversions!(@enum ContentKind {
            Bytes, Line, Statement, Columns, Row, File, ToolCall, ToolResult, HttpRequest, HttpResponse
        });
        $crate::__impl_contract_conversions!(@record FileChunk { path, offset, data, size, digest });
        $crate::__impl_contract_conversions!(@record ToolCall { server, tool, id, arguments });
        $crate::__impl_contract_conversions!(@record ToolResult { server, tool, id, output, is_error });
        $crate::__impl_contract_conversions!(@record HttpRequest { method, uri, headers });
        $crate::__impl_contract_conversions!(@record HttpResponse { status, headers });
        $crate::__impl_contract_conversions!(@record Frame { seq, direction(into), timestamp_ms, content(into) });
        $crate::__impl_contract_conversions!(@record Verdict { action(into), record_as(opt) });
        $crate::__impl_contract_conversions!(@variant Content {
            Bytes(b) => b,
            Line(l) => l,
            Statement(s) => s.into(),
            Columns(c) => c.into_iter().map(Into::into).collect(),
            Row(r) => r,
            File(f) => f.into(),
            ToolCall(t) => t.into(),
            ToolResult(t) => t.into(),
            HttpRequest(h) => h.into(),
            HttpResponse(h) => h.into(),
        });

        impl From<wit::Action> for $crate::Action {
            fn from(a: wit::Action) -> Self {
                match a {
                    wit::Action::Pass => $crate::Action::Pass,
                    wit::Action::Replace(c) => $crate::Action::Replace(c.into()),
                    wit::Action::Hold(r) => $crate::Action::Hold(r),
                    wit::Action::Deny(r) => $crate::Action::Deny(r),
                }
            }
        }
        impl From<$crate::Action> for wit::Action {
            fn from(a: $crate::Action) -> Self {
                match a {
                    $crate::Action::Pass => wit::Action::Pass,
                    $crate::Action::Replace(c) => wit::Action::Replace(c.into()),
                    $crate::Action::Hold(r) => wit::Action::Hold(r),
                    $crate::Action::Deny(r) => wit::Action::Deny(r),
                }
            }
        }
    };
    // What no version of the contract changed: shared with the bindings of earlier versions
    // (the gateway still loads 0.2.0 and 0.3.0 plugins).
    (@shared) => {
        $crate::__impl_contract_conversions!(@enum Direction { ClientToTarget, TargetToClient });
        $crate::__impl_contract_conversions!(@enum CellFormat { Text, Binary });
        $crate::__impl_contract_conversions!(@record Identity { subject, name, groups });
        $crate::__impl_contract_conversions!(@record SessionInfo { id, connection, protocol, identity(into), started_at_ms });
        $crate::__impl_contract_conversions!(@record Column { name, table, table_oid, type_oid, format(into) });
        $crate::__impl_contract_conversions!(@record Statement { text, params });
        $crate::__impl_contract_conversions!(@record Event { index, session, seq, kind, time_ms, meta, payload });
        $crate::__impl_contract_conversions!(@variant SinkError { Retryable(m) => m, Permanent(m) => m });
    };
    (@enum $ty:ident { $($case:ident),* $(,)? }) => {
        impl From<wit::$ty> for $crate::$ty {
            fn from(v: wit::$ty) -> Self {
                match v { $(wit::$ty::$case => $crate::$ty::$case),* }
            }
        }
        impl From<$crate::$ty> for wit::$ty {
            fn from(v: $crate::$ty) -> Self {
                match v { $($crate::$ty::$case => wit::$ty::$case),* }
            }
        }
    };
    (@record $ty:ident { $($field:ident $(($how:ident))?),* }) => {
        impl From<wit::$ty> for $crate::$ty {
            fn from(v: wit::$ty) -> Self {
                $crate::$ty { $($field: $crate::__impl_contract_conversions!(@field v.$field $($how)?)),* }
            }
        }
        impl From<$crate::$ty> for wit::$ty {
            fn from(v: $crate::$ty) -> Self {
                wit::$ty { $($field: $crate::__impl_contract_conversions!(@field v.$field $($how)?)),* }
            }
        }
    };
    // A field is moved as it is, converted (`into`), converted inside an option (`opt`) or
    // element by element (`each`).
    (@field $v:ident . $field:ident) => { $v.$field };
    (@field $v:ident . $field:ident into) => { $v.$field.into() };
    (@field $v:ident . $field:ident opt) => { $v.$field.map(Into::into) };
    (@field $v:ident . $field:ident each) => { $v.$field.into_iter().map(Into::into).collect() };
    (@variant $ty:ident { $($case:ident($x:ident) => $conv:expr),* $(,)? }) => {
        impl From<wit::$ty> for $crate::$ty {
            fn from(v: wit::$ty) -> Self {
                match v { $(wit::$ty::$case($x) => $crate::$ty::$case($conv)),* }
            }
        }
        impl From<$crate::$ty> for wit::$ty {
            fn from(v: $crate::$ty) -> Self {
                match v { $($crate::$ty::$case($x) => wit::$ty::$case($conv)),* }
            }
        }
    };
}
