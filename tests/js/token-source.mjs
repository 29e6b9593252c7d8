// The `secretgen:generator/token-source` interface implemented in JavaScript,
// for a generator transpiled with
//   jco transpile generator.wasm -o out --name generator \
//     --map 'secretgen:generator/token-source=./token-source.mjs'
// (copy this file next to out/generator.js).
//
// It is the JS twin of the `env-token-source` plug, with the same rules and
// the same messages, so the bare generator in Node.js and the composed one
// agree: the token comes from the Node.js process's environment variable
// `OIDC_TOKEN`, or the one `TOKEN_ENV_VAR` names; surrounding whitespace is
// trimmed; errors name the variable, never the token.

const DEFAULT_VAR = 'OIDC_TOKEN';

/**
 * WIT: `service-account-token: func(account: service-account-ref, namespace: string) -> result<string, string>`.
 *
 * jco passes the record as `{ name, namespace, audiences }` and accepts a
 * `{ tag: 'ok' | 'err', val }` object for a `result`; returning the error as a
 * value (rather than throwing) keeps it a `token-source` error in the guest
 * instead of a trap.
 */
export function serviceAccountToken(_account, _namespace) {
  const selected = (process.env.TOKEN_ENV_VAR ?? '').trim();
  const name = selected === '' ? DEFAULT_VAR : selected;
  const value = process.env[name];
  if (value === undefined) {
    return { tag: 'err', val: `environment variable ${name} is not set` };
  }
  const token = value.trim();
  if (token === '') {
    return { tag: 'err', val: `environment variable ${name} is empty` };
  }
  return { tag: 'ok', val: token };
}
