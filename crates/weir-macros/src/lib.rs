//! The `#[weir::task]` and `#[weir::flow]` attribute macros. Use them through the `weir` crate,
//! whose documentation describes every option.
//!
//! Both macros keep the user's function as an inner function and replace the outer one by
//! a plain `fn` with the same arguments that returns a call object (`weir::TaskCall` or
//! `weir::FlowCall`); awaiting the call object runs it under the engine. A module with the
//! same name (modules live in the type namespace, functions in the value namespace) holds
//! the static spec, so `my_task::SPEC` and `my_flow::schema()` are reachable by name.

use proc_macro::TokenStream;
use proc_macro2::{Delimiter, Spacing, Span, TokenStream as TokenStream2, TokenTree};
use quote::{format_ident, quote};
use syn::{
    FnArg, Ident, ItemFn, LitBool, LitFloat, LitInt, LitStr, Pat, Path, ReturnType, Type, parse_macro_input,
    spanned::Spanned,
};

/// Turns an `async fn` (or a plain `fn`, run on the blocking pool) into a weir task.
/// See the `weir` crate for the options.
#[proc_macro_attribute]
pub fn task(attr: TokenStream, item: TokenStream) -> TokenStream {
    // Hashed as written, before syn re-emits it (its rendering is not ours to keep stable).
    let source_hash = source_hash(TokenStream2::from(item.clone()));
    let func = parse_macro_input!(item as ItemFn);
    let mut opts = TaskOpts::default();
    let parser = syn::meta::parser(|meta| opts.parse(meta));
    parse_macro_input!(attr with parser);
    expand_task(opts, func, source_hash)
        .unwrap_or_else(|e| e.to_compile_error())
        .into()
}

/// The hash `inputs+source` keys use: BLAKE3 over a rendering of the task's tokens that
/// this crate defines, so neither the compiler's nor `proc_macro2`'s `to_string` spacing
/// can move it. Comments and whitespace are not tokens; doc comments are (`#[doc = ".."]`
/// attributes) and are dropped, so documenting a task keeps its cache. Every token is
/// tagged and length-prefixed. A punctuation mark's spacing is kept only before another
/// mark, where it decides the operator (`&&` against `& &`), and nowhere else, where only
/// the compiler's bookkeeping could change it. Invisible groups (a `macro_rules!`
/// fragment) are kept as groups, since they decide precedence. A trailing comma (which
/// rustfmt adds when it breaks a list over lines) is dropped where it cannot mean
/// anything: in `{}` and `[]`, and in `()` holding more than one item (`(x,)` is a tuple,
/// `(x)` is not).
///
/// Changing this rendering changes every `inputs+source` key: `SOURCE_CONTEXT` then bumps
/// and the golden test below changes with it.
fn source_hash(tokens: TokenStream2) -> String {
    const SOURCE_CONTEXT: &str = "weir 2026-11 task source tokens v1";
    let mut h = blake3::Hasher::new_derive_key(SOURCE_CONTEXT);
    hash_tokens(&mut h, tokens, Delimiter::None);
    h.finalize().to_hex().to_string()
}

fn hash_tokens(h: &mut blake3::Hasher, tokens: TokenStream2, delimiter: Delimiter) {
    let tokens: Vec<TokenTree> = tokens.into_iter().collect();
    let is_comma = |t: &TokenTree| matches!(t, TokenTree::Punct(p) if p.as_char() == ',');
    let drop_trailing_comma = match delimiter {
        Delimiter::Brace | Delimiter::Bracket => true,
        Delimiter::Parenthesis => tokens.iter().filter(|t| is_comma(t)).count() > 1,
        Delimiter::None => false,
    };
    let mut i = 0;
    while i < tokens.len() {
        if let Some(len) = doc_attribute_len(&tokens[i..]) {
            i += len;
            continue;
        }
        if drop_trailing_comma && i + 1 == tokens.len() && is_comma(&tokens[i]) {
            break;
        }
        match &tokens[i] {
            TokenTree::Ident(ident) => text(h, b'i', &ident.to_string()),
            TokenTree::Literal(lit) => text(h, b'l', &lit.to_string()),
            TokenTree::Punct(p) => {
                h.update(b"p");
                h.update(&u32::from(p.as_char()).to_le_bytes());
                if p.spacing() == Spacing::Joint && matches!(tokens.get(i + 1), Some(TokenTree::Punct(_))) {
                    h.update(b"j");
                }
            }
            TokenTree::Group(g) => {
                let (open, close) = match g.delimiter() {
                    Delimiter::Parenthesis => (b"(", b")"),
                    Delimiter::Brace => (b"{", b"}"),
                    Delimiter::Bracket => (b"[", b"]"),
                    Delimiter::None => (b"<", b">"),
                };
                h.update(open);
                hash_tokens(h, g.stream(), g.delimiter());
                h.update(close);
            }
        }
        i += 1;
    }
}

fn text(h: &mut blake3::Hasher, tag: u8, s: &str) {
    h.update(&[tag]);
    h.update(&(s.len() as u64).to_le_bytes());
    h.update(s.as_bytes());
}

/// How many tokens a doc attribute at the start of `tokens` spans (`#[doc ..]` or
/// `#![doc ..]`), if there is one.
fn doc_attribute_len(tokens: &[TokenTree]) -> Option<usize> {
    let TokenTree::Punct(hash) = tokens.first()? else {
        return None;
    };
    if hash.as_char() != '#' {
        return None;
    }
    let bang = matches!(tokens.get(1), Some(TokenTree::Punct(p)) if p.as_char() == '!');
    let at = if bang { 2 } else { 1 };
    let TokenTree::Group(g) = tokens.get(at)? else {
        return None;
    };
    let is_doc = g.delimiter() == Delimiter::Bracket
        && matches!(g.stream().into_iter().next(), Some(TokenTree::Ident(i)) if i == "doc");
    is_doc.then_some(at + 1)
}

/// Turns an `async fn` into a weir flow. See the `weir` crate.
#[proc_macro_attribute]
pub fn flow(attr: TokenStream, item: TokenStream) -> TokenStream {
    let func = parse_macro_input!(item as ItemFn);
    let mut name: Option<LitStr> = None;
    let mut tags: Vec<LitStr> = Vec::new();
    let parser = syn::meta::parser(|meta| {
        if meta.path.is_ident("name") {
            name = Some(meta.value()?.parse()?);
            Ok(())
        } else if meta.path.is_ident("tags") {
            let list: syn::ExprArray = meta.value()?.parse()?;
            for e in list.elems {
                match e {
                    syn::Expr::Lit(syn::ExprLit {
                        lit: syn::Lit::Str(s), ..
                    }) => tags.push(s),
                    other => {
                        return Err(syn::Error::new(
                            other.span(),
                            "tags are string literals: tags = [\"nightly\"]",
                        ));
                    }
                }
            }
            Ok(())
        } else {
            Err(meta.error("unknown flow option (expected: name = \"...\", tags = [\"...\"])"))
        }
    });
    parse_macro_input!(attr with parser);
    expand_flow(name, tags, func)
        .unwrap_or_else(|e| e.to_compile_error())
        .into()
}

#[derive(Default)]
struct TaskOpts {
    name: Option<LitStr>,
    cache: Option<(String, Span)>,
    key: Option<Path>,
    retries: Option<u32>,
    retry_delay: Option<u128>,
    backoff: Option<(String, Span)>,
    jitter: Option<f64>,
    timeout: Option<u128>,
    cache_expiration: Option<u128>,
    refresh_cache: bool,
    cache_version: Option<LitStr>,
    serializer: Option<(String, Span)>,
    blocking: bool,
    isolation: Option<bool>,
    compression: Option<String>,
    result_key: Option<LitStr>,
    on_duplicate: Option<String>,
}

fn duration_nanos(lit: &LitStr) -> syn::Result<u128> {
    humantime::parse_duration(lit.value().trim())
        .map(|d| d.as_nanos())
        .map_err(|e| syn::Error::new(lit.span(), format!("invalid duration: {e} (examples: 500ms, 10s, 1d)")))
}

impl TaskOpts {
    fn parse(&mut self, meta: syn::meta::ParseNestedMeta<'_>) -> syn::Result<()> {
        let p = &meta.path;
        let ident = p.get_ident().map(|i| i.to_string()).unwrap_or_default();
        match ident.as_str() {
            "name" => self.name = Some(meta.value()?.parse()?),
            "cache" => {
                let lit: LitStr = meta.value()?.parse()?;
                let v = lit.value();
                if !matches!(v.as_str(), "inputs" | "inputs+source" | "none") {
                    return Err(syn::Error::new(
                        lit.span(),
                        "unknown cache policy (expected \"inputs\", \"inputs+source\" or \"none\"; for your own key use key = my_key_fn)",
                    ));
                }
                self.cache = Some((v, lit.span()));
            }
            "key" => self.key = Some(meta.value()?.parse()?),
            "retries" => self.retries = Some(meta.value()?.parse::<LitInt>()?.base10_parse()?),
            "retry_delay" => self.retry_delay = Some(duration_nanos(&meta.value()?.parse()?)?),
            "backoff" => {
                let lit: LitStr = meta.value()?.parse()?;
                if !matches!(lit.value().as_str(), "fixed" | "exponential") {
                    return Err(syn::Error::new(lit.span(), "backoff is \"fixed\" or \"exponential\""));
                }
                self.backoff = Some((lit.value(), lit.span()));
            }
            "jitter" => {
                let lit: LitFloat = meta.value()?.parse()?;
                let v: f64 = lit.base10_parse()?;
                if !(0.0..=1.0).contains(&v) {
                    return Err(syn::Error::new(lit.span(), "jitter is a fraction between 0.0 and 1.0"));
                }
                self.jitter = Some(v);
            }
            "timeout" => self.timeout = Some(duration_nanos(&meta.value()?.parse()?)?),
            "cache_expiration" => self.cache_expiration = Some(duration_nanos(&meta.value()?.parse()?)?),
            "refresh_cache" => {
                self.refresh_cache = if meta.input.peek(syn::Token![=]) {
                    meta.value()?.parse::<LitBool>()?.value
                } else {
                    true
                }
            }
            "cache_version" => self.cache_version = Some(meta.value()?.parse()?),
            "serializer" => {
                let lit: LitStr = meta.value()?.parse()?;
                if !matches!(lit.value().as_str(), "json" | "msgpack" | "raw") {
                    return Err(syn::Error::new(
                        lit.span(),
                        "serializer is \"json\", \"msgpack\" or \"raw\" (byte buffers)",
                    ));
                }
                self.serializer = Some((lit.value(), lit.span()));
            }
            "blocking" => self.blocking = true,
            "isolation" => {
                let lit: LitStr = meta.value()?.parse()?;
                self.isolation = Some(match lit.value().as_str() {
                    "serializable" => true,
                    "none" => false,
                    _ => return Err(syn::Error::new(lit.span(), "isolation is \"serializable\" or \"none\"")),
                });
            }
            "result_key" => self.result_key = Some(meta.value()?.parse()?),
            "on_duplicate" => {
                let lit: LitStr = meta.value()?.parse()?;
                if !matches!(lit.value().as_str(), "skip" | "overwrite" | "error") {
                    return Err(syn::Error::new(
                        lit.span(),
                        "on_duplicate is \"skip\", \"overwrite\" or \"error\"",
                    ));
                }
                self.on_duplicate = Some(lit.value());
            }
            "compression" => {
                let lit: LitStr = meta.value()?.parse()?;
                if !matches!(lit.value().as_str(), "zstd" | "none") {
                    return Err(syn::Error::new(lit.span(), "compression is \"zstd\" or \"none\""));
                }
                self.compression = Some(lit.value());
            }
            _ => {
                return Err(meta.error(
                    "unknown task option (expected one of: name, cache, key, cache_version, cache_expiration, \
                     refresh_cache, serializer, compression, isolation, result_key, on_duplicate, retries, \
                     retry_delay, backoff, jitter, timeout, blocking)",
                ));
            }
        }
        Ok(())
    }
}

struct Arg {
    ident: Ident,
    mutable: bool,
    ty: Type,
}

fn args_of(func: &ItemFn) -> syn::Result<Vec<Arg>> {
    if !func.sig.generics.params.is_empty() {
        return Err(syn::Error::new(
            func.sig.generics.span(),
            "weir tasks and flows cannot be generic: their cache keys and records need one concrete signature",
        ));
    }
    func.sig
        .inputs
        .iter()
        .map(|arg| match arg {
            FnArg::Receiver(r) => Err(syn::Error::new(
                r.span(),
                "weir tasks and flows are free functions, not methods",
            )),
            FnArg::Typed(pt) => match &*pt.pat {
                Pat::Ident(pi) if pi.subpat.is_none() && pi.by_ref.is_none() => Ok(Arg {
                    ident: pi.ident.clone(),
                    mutable: pi.mutability.is_some(),
                    ty: (*pt.ty).clone(),
                }),
                other => Err(syn::Error::new(
                    other.span(),
                    "give this argument a plain name (patterns are not supported here)",
                )),
            },
        })
        .collect()
}

fn output_type(func: &ItemFn) -> syn::Result<Type> {
    match &func.sig.output {
        ReturnType::Type(_, ty) => Ok((**ty).clone()),
        ReturnType::Default => Err(syn::Error::new(
            func.sig.ident.span(),
            "a weir task or flow returns a Result, e.g. `-> anyhow::Result<i64>`",
        )),
    }
}

/// Rejects placeholders a result key template cannot fill, at compile time.
fn check_template(lit: &LitStr, args: &[Arg]) -> syn::Result<()> {
    const FIELDS: [&str; 5] = ["flow_name", "task_name", "flow_run_id", "task_run_id", "date"];
    let text = lit.value();
    let mut rest = text.as_str();
    while let Some(i) = rest.find('{') {
        rest = &rest[i + 1..];
        if let Some(stripped) = rest.strip_prefix('{') {
            rest = stripped;
            continue;
        }
        let Some(end) = rest.find('}') else {
            return Err(syn::Error::new(lit.span(), "unclosed '{' in result_key"));
        };
        let name = &rest[..end];
        if !FIELDS.contains(&name) && !args.iter().any(|a| a.ident == name) {
            return Err(syn::Error::new(
                lit.span(),
                format!(
                    "result_key uses '{{{name}}}', which is neither a parameter of this task nor one of {FIELDS:?}"
                ),
            ));
        }
        rest = &rest[end + 1..];
    }
    if text.starts_with('/') {
        return Err(syn::Error::new(
            lit.span(),
            "result_key is relative to the result store; remove the leading '/'",
        ));
    }
    Ok(())
}

fn nanos(n: u128) -> TokenStream2 {
    let n = n as u64;
    quote!(::core::time::Duration::from_nanos(#n))
}

fn expand_task(opts: TaskOpts, func: ItemFn, source_hash: String) -> syn::Result<TokenStream2> {
    let args = args_of(&func)?;
    let out_ty = output_type(&func)?;
    let is_async = func.sig.asyncness.is_some();
    if opts.blocking && is_async {
        return Err(syn::Error::new(
            func.sig.fn_token.span(),
            "a blocking task is a plain `fn` (it runs on the blocking thread pool); remove `async` or `blocking`",
        ));
    }
    let blocking = !is_async;
    if opts.key.is_some() && opts.cache.as_ref().is_some_and(|(c, _)| c == "none") {
        return Err(syn::Error::new(
            opts.cache.as_ref().map(|c| c.1).unwrap_or_else(Span::call_site),
            "`key` and cache = \"none\" contradict each other",
        ));
    }

    let vis = &func.vis;
    let attrs = &func.attrs;
    let name = &func.sig.ident;
    let name_str = opts
        .name
        .as_ref()
        .map(|l| l.value())
        .unwrap_or_else(|| name.to_string());
    let body_ident = format_ident!("__weir_task_body");

    let policy = match (&opts.key, opts.cache.as_ref().map(|c| c.0.as_str())) {
        (Some(_), _) => quote!(::weir::CachePolicy::Custom),
        (None, Some("inputs")) => quote!(::weir::CachePolicy::Inputs),
        (None, Some("inputs+source")) => quote!(::weir::CachePolicy::InputsAndSource),
        _ => quote!(::weir::CachePolicy::None),
    };
    let cached = opts.key.is_some()
        || opts.result_key.is_some()
        || matches!(
            opts.cache.as_ref().map(|c| c.0.as_str()),
            Some("inputs" | "inputs+source")
        );
    if let Some(lit) = &opts.result_key {
        check_template(lit, &args)?;
    }
    if opts.on_duplicate.is_some() && opts.result_key.is_none() {
        return Err(syn::Error::new(
            Span::call_site(),
            "on_duplicate applies to tasks with a result_key",
        ));
    }
    let retries = opts.retries.unwrap_or(0);
    let retry_delay = nanos(opts.retry_delay.unwrap_or(0));
    let backoff = match opts.backoff.as_ref().map(|b| b.0.as_str()) {
        Some("exponential") => quote!(::weir::Backoff::Exponential),
        _ => quote!(::weir::Backoff::Fixed),
    };
    let jitter = opts.jitter.unwrap_or(0.0);
    let timeout = match opts.timeout {
        Some(n) => {
            let d = nanos(n);
            quote!(::core::option::Option::Some(#d))
        }
        None => quote!(::core::option::Option::None),
    };
    let expiration = match opts.cache_expiration {
        Some(n) => {
            let d = nanos(n);
            quote!(::core::option::Option::Some(#d))
        }
        None => quote!(::core::option::Option::None),
    };
    let refresh = opts.refresh_cache;
    let cache_version = opts.cache_version.as_ref().map(|l| l.value()).unwrap_or_default();
    let format = match opts.serializer.as_ref().map(|s| s.0.as_str()) {
        Some("msgpack") => quote!(::weir::Format::MsgPack),
        Some("raw") => quote!(::weir::Format::Raw),
        _ => quote!(::weir::Format::Json),
    };
    let param_names: Vec<String> = args.iter().map(|a| a.ident.to_string()).collect();
    let isolation = opts.isolation.unwrap_or(true);
    let result_key = match &opts.result_key {
        Some(l) => quote!(::core::option::Option::Some(#l)),
        None => quote!(::core::option::Option::None),
    };
    let on_duplicate = match opts.on_duplicate.as_deref() {
        Some("overwrite") => quote!(::weir::OnDuplicate::Overwrite),
        Some("error") => quote!(::weir::OnDuplicate::Error),
        _ => quote!(::weir::OnDuplicate::Skip),
    };
    let compression = match &opts.compression {
        Some(c) => quote!(::core::option::Option::Some(#c)),
        None => quote!(::core::option::Option::None),
    };

    // The outer function takes the arguments by value, without `mut`.
    let outer_params = args.iter().map(|a| {
        let (i, t) = (&a.ident, &a.ty);
        quote!(#i: #t)
    });
    let idents: Vec<&Ident> = args.iter().map(|a| &a.ident).collect();
    let inner_params = args.iter().map(|a| {
        let (i, t) = (&a.ident, &a.ty);
        if a.mutable { quote!(mut #i: #t) } else { quote!(#i: #t) }
    });
    let inner_body = &func.block;
    let inner_fn = if is_async {
        quote!(async fn #body_ident(#(#inner_params),*) -> #out_ty #inner_body)
    } else {
        quote!(fn #body_ident(#(#inner_params),*) -> #out_ty #inner_body)
    };

    let run_body = if blocking {
        quote!(::weir::__private::blocking(move || ::weir::TaskOutput::into_result(#body_ident(#(#idents),*))))
    } else {
        quote!(::weir::__private::boxed(async move { ::weir::TaskOutput::into_result(#body_ident(#(#idents),*).await) }))
    };

    // Retries need the inputs again for every attempt, so they are cloned; a task without
    // retries moves them in once and needs no `Clone`.
    let attempt = if retries > 0 {
        quote! {
            move || {
                #(let #idents = ::core::clone::Clone::clone(&#idents);)*
                #run_body
            }
        }
    } else {
        quote! {
            {
                let mut __weir_args = ::core::option::Option::Some((#(#idents,)*));
                move || match __weir_args.take() {
                    ::core::option::Option::Some((#(#idents,)*)) => #run_body,
                    ::core::option::Option::None => ::weir::__private::already_ran(),
                }
            }
        }
    };

    let key_material = if let Some(key_fn) = &opts.key {
        quote! {
            ::weir::__private::KeyMaterial::recording_files(|| {
                ::weir::__private::KeyMaterial::custom(::weir::__private::digest(&#key_fn(#(&#idents),*)))
            })
        }
    } else {
        let names = &param_names;
        quote! {
            ::weir::__private::KeyMaterial::recording_files(|| {
                ::weir::__private::KeyMaterial::inputs(::std::vec![#((#names, ::weir::__private::digest(&#idents))),*])
            })
        }
    };

    // Hash-keyed tasks must own their key path (see `KeyPathClaim`); named results are
    // keyed by their name instead.
    let hashed = cached && opts.result_key.is_none();
    let key_material = if hashed {
        quote! {
            match #name::__weir_key_path_claim().check() {
                ::core::result::Result::Ok(()) => #key_material,
                ::core::result::Result::Err(e) => ::core::result::Result::Err(e),
            }
        }
    } else {
        key_material
    };

    let construct = if opts.result_key.is_some() {
        let names = &param_names;
        quote!({
            // Rendered before the inputs move into the attempt.
            let __weir_params = ::std::vec![#((#names, ::weir::__private::serde_json::to_value(&#idents))),*];
            ::weir::TaskCall::__cached(&#name::SPEC, #key_material, #attempt).__with_params(__weir_params)
        })
    } else if cached {
        quote!(::weir::TaskCall::__cached(&#name::SPEC, #key_material, #attempt))
    } else {
        quote!(::weir::TaskCall::__new(&#name::SPEC, #attempt))
    };

    Ok(quote! {
        #(#attrs)*
        #[allow(clippy::too_many_arguments)]
        #vis fn #name(#(#outer_params),*) -> ::weir::TaskCall<<#out_ty as ::weir::TaskOutput>::Ok> {
            #inner_fn
            #construct
        }

        #[doc(hidden)]
        #[allow(non_snake_case, dead_code)]
        #vis mod #name {
            /// Its compiler path names the functions this task is nested in, which
            /// `module_path!()` leaves out.
            struct __WeirTaskMarker;

            /// This definition's key path; its `static` is what tells it apart from another
            /// definition with the same path. After the first call, one atomic load.
            pub(super) fn __weir_key_path_claim() -> &'static ::weir::__private::KeyPathClaim {
                static CLAIM: ::std::sync::OnceLock<::weir::__private::KeyPathClaim> = ::std::sync::OnceLock::new();
                CLAIM.get_or_init(|| {
                    ::weir::__private::KeyPathClaim::new(
                        ::weir::__private::task_key_path(
                            ::core::module_path!(),
                            ::core::any::type_name::<__WeirTaskMarker>(),
                        ),
                        &CLAIM as *const _ as usize,
                        #hashed,
                    )
                })
            }

            fn __weir_key_path() -> &'static str {
                __weir_key_path_claim().path()
            }

            /// The static description of this task.
            pub static SPEC: ::weir::TaskSpec = ::weir::TaskSpec {
                name: #name_str,
                path: ::core::module_path!(),
                key_path: __weir_key_path,
                source_hash: #source_hash,
                cache: #policy,
                cache_version: #cache_version,
                cache_expiration: #expiration,
                refresh_cache: #refresh,
                format: #format,
                retries: #retries,
                retry_delay: #retry_delay,
                backoff: #backoff,
                jitter: #jitter,
                timeout: #timeout,
                blocking: #blocking,
                params: &[#(#param_names),*],
                isolation: #isolation,
                compression: #compression,
                result_key: #result_key,
                on_duplicate: #on_duplicate,
            };
        }
    })
}

fn expand_flow(name_attr: Option<LitStr>, tags: Vec<LitStr>, func: ItemFn) -> syn::Result<TokenStream2> {
    let args = args_of(&func)?;
    let out_ty = output_type(&func)?;
    if func.sig.asyncness.is_none() {
        return Err(syn::Error::new(
            func.sig.fn_token.span(),
            "a weir flow is an `async fn`",
        ));
    }
    let vis = &func.vis;
    let attrs = &func.attrs;
    let name = &func.sig.ident;
    let name_str = name_attr
        .as_ref()
        .map(|l| l.value())
        .unwrap_or_else(|| name.to_string());
    let body_ident = format_ident!("__weir_flow_body");
    let idents: Vec<&Ident> = args.iter().map(|a| &a.ident).collect();
    let tys: Vec<&Type> = args.iter().map(|a| &a.ty).collect();
    let outer_params = args.iter().map(|a| {
        let (i, t) = (&a.ident, &a.ty);
        quote!(#i: #t)
    });
    let inner_params = args.iter().map(|a| {
        let (i, t) = (&a.ident, &a.ty);
        if a.mutable { quote!(mut #i: #t) } else { quote!(#i: #t) }
    });
    let inner_body = &func.block;
    let doc = format!("The parameters of the `{name_str}` flow, as the API and UI see them.");

    Ok(quote! {
        #(#attrs)*
        #[allow(clippy::too_many_arguments)]
        #vis fn #name(#(#outer_params),*) -> ::weir::FlowCall<<#out_ty as ::weir::TaskOutput>::Ok> {
            async fn #body_ident(#(#inner_params),*) -> #out_ty #inner_body

            #[derive(::weir::__private::serde::Serialize)]
            #[serde(crate = "::weir::__private::serde")]
            struct __WeirParamsRef<'a> {
                #(#idents: &'a #tys,)*
                #[serde(skip)]
                __weir_marker: ::core::marker::PhantomData<&'a ()>,
            }
            let __weir_params = ::weir::__private::params_json(&__WeirParamsRef {
                #(#idents: &#idents,)*
                __weir_marker: ::core::marker::PhantomData,
            });
            ::weir::FlowCall::__new(
                &#name::SPEC,
                __weir_params,
                ::weir::__private::boxed(async move { ::weir::TaskOutput::into_result(#body_ident(#(#idents),*).await) }),
            )
        }

        #[doc(hidden)]
        #[allow(non_snake_case, dead_code, unused_imports)]
        #vis mod #name {
            use super::*;

            #[doc = #doc]
            #[derive(::weir::__private::serde::Serialize, ::weir::__private::serde::Deserialize, ::weir::__private::schemars::JsonSchema)]
            #[serde(crate = "::weir::__private::serde", deny_unknown_fields)]
            #[schemars(crate = "::weir::__private::schemars")]
            pub struct Params {
                #(pub #idents: #tys,)*
            }

            /// The JSON Schema of this flow's parameters.
            pub fn schema() -> ::weir::__private::serde_json::Value {
                ::weir::__private::schema_of::<Params>()
            }

            /// The static description of this flow.
            pub static SPEC: ::weir::FlowSpec = ::weir::FlowSpec {
                name: #name_str,
                path: ::core::module_path!(),
                schema,
                tags: &[#(#tags),*],
            };
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hash(src: &str) -> String {
        source_hash(src.parse().expect("test source parses"))
    }

    const PLAIN: &str = "async fn total(xs: Vec<i64>) -> anyhow::Result<i64> { Ok(xs.iter().sum::<i64>() + 1) }";

    #[test]
    fn doc_comments_comments_and_layout_do_not_change_the_source_hash() {
        let documented = r#"
            /// Sums the inputs.
            ///
            /// Then adds one, for reasons.
            #[doc = "and an explicit doc attribute"]
            async fn total(
                xs: Vec<i64> // the inputs
            ) -> anyhow::Result<i64> {
                //! an inner doc comment
                /* a block comment */
                Ok(xs.iter().sum::<i64>()
                    + 1)
            }
        "#;
        assert_eq!(hash(PLAIN), hash(documented));
    }

    #[test]
    fn code_changes_do_change_the_source_hash() {
        let base = hash(PLAIN);
        for changed in [
            "async fn total(xs: Vec<i64>) -> anyhow::Result<i64> { Ok(xs.iter().sum::<i64>() + 2) }",
            "async fn total(ys: Vec<i64>) -> anyhow::Result<i64> { Ok(ys.iter().sum::<i64>() + 1) }",
            "async fn total(xs: Vec<i32>) -> anyhow::Result<i64> { Ok(xs.iter().sum::<i64>() + 1) }",
            "#[inline] async fn total(xs: Vec<i64>) -> anyhow::Result<i64> { Ok(xs.iter().sum::<i64>() + 1) }",
            "async fn total(xs: Vec<i64>) -> anyhow::Result<i64> { Ok(xs.iter().sum::<i64>() + 1 ) ; }",
            r#"async fn total(xs: Vec<i64>) -> anyhow::Result<i64> { Ok(xs.iter().sum::<i64>() + 1) } fn s() -> &'static str { "x" }"#,
        ] {
            assert_ne!(base, hash(changed), "{changed}");
        }
    }

    #[test]
    fn spacing_counts_only_where_it_makes_another_operator() {
        // `&&` and `& &` are different operators…
        assert_ne!(hash("fn f() { a && b }"), hash("fn f() { a & &b }"));
        assert_ne!(hash("fn f() { a..=b }"), hash("fn f() { a.. =b }"));
        // …while spacing before a word or a bracket is not code.
        assert_eq!(hash("fn f() { - x }"), hash("fn f() { -x }"));
        assert_eq!(
            hash("fn f() -> Vec<Vec<u8>> { x }"),
            hash("fn f() -> Vec< Vec <u8>> { x }")
        );
        assert_ne!(
            hash("fn f() -> Vec<Vec<u8>> { x }"),
            hash("fn f() -> Vec<Vec<u8> > { x }")
        );
    }

    #[test]
    fn trailing_commas_count_only_where_they_make_a_tuple() {
        let two = "fn f(a: u8, b: u8) { g(a, b); [a, b]; S { a, b } }";
        let trailing = "fn f(\n a: u8,\n b: u8,\n) { g(a, b,); [a, b,]; S { a, b, } }";
        assert_eq!(hash(two), hash(trailing));
        assert_eq!(hash("fn f() { [a] }"), hash("fn f() { [a,] }"));
        assert_ne!(hash("fn f() -> (u8,) { (a,) }"), hash("fn f() -> (u8) { (a) }"));
        assert_ne!(hash("fn f() { g(a, b) }"), hash("fn f() { g(a b) }"));
    }

    #[test]
    fn doc_like_attributes_that_are_not_docs_are_kept() {
        assert_ne!(hash(PLAIN), hash(&format!("#[cfg(test)] {PLAIN}")));
        assert_ne!(hash(PLAIN), hash(&format!("#[docs] {PLAIN}")));
    }

    /// The hash of a fixed source: a change to the rendering changes every `inputs+source`
    /// key users have stored, so it must be deliberate (see `source_hash`).
    #[test]
    fn golden_source_hash() {
        assert_eq!(
            hash(PLAIN),
            "06123e33345dac05ec23323f42223c270e59a4008ef5e8887c95c504789316de"
        );
    }
}
