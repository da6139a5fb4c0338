// C [m, n] = A [m, k] × B [k, n], row-major. Each workgroup of 16×16 invocations computes a
// 64×64 tile of C: it stages 64×16 of A and 16×64 of B in workgroup memory per step along k,
// and each invocation accumulates a 4×4 block (rows ly + 16·i, columns lx + 16·j, so that
// loads and stores of neighbouring invocations touch neighbouring addresses).

struct Params {
    m: u32,
    k: u32,
    n: u32,
}

const TILE: u32 = 64u;
const STEP: u32 = 16u;

var<workgroup> a_tile: array<f32, 1024>; // TILE rows × STEP
var<workgroup> b_tile: array<f32, 1024>; // STEP rows × TILE

fn store_row(row: u32, col0: u32, lx: u32, acc: vec4<f32>) {
    if row >= params.m {
        return;
    }
    for (var j = 0u; j < 4u; j++) {
        let col = col0 + lx + 16u * j;
        if col < params.n {
            output[row * params.n + col] = acc[j];
        }
    }
}

@compute @workgroup_size(16, 16)
fn main(@builtin(workgroup_id) group: vec3<u32>, @builtin(local_invocation_id) local: vec3<u32>) {
    let row0 = group.y * TILE;
    let col0 = group.x * TILE;
    let lx = local.x;
    let ly = local.y;
    let thread = ly * 16u + lx;
    var acc0 = vec4<f32>(0.0);
    var acc1 = vec4<f32>(0.0);
    var acc2 = vec4<f32>(0.0);
    var acc3 = vec4<f32>(0.0);
    let steps = (params.k + STEP - 1u) / STEP;
    for (var s = 0u; s < steps; s++) {
        let k0 = s * STEP;
        for (var l = 0u; l < 4u; l++) {
            let slot = thread + l * 256u;
            let ar = slot / STEP;
            let ak = k0 + slot % STEP;
            var av = 0.0;
            if row0 + ar < params.m && ak < params.k {
                av = input_a[(row0 + ar) * params.k + ak];
            }
            a_tile[slot] = av;
            let bk = k0 + slot / TILE;
            let bc = col0 + slot % TILE;
            var bv = 0.0;
            if bk < params.k && bc < params.n {
                bv = input_b[bk * params.n + bc];
            }
            b_tile[slot] = bv;
        }
        workgroupBarrier();
        for (var kk = 0u; kk < STEP; kk++) {
            let b = vec4<f32>(
                b_tile[kk * TILE + lx],
                b_tile[kk * TILE + lx + 16u],
                b_tile[kk * TILE + lx + 32u],
                b_tile[kk * TILE + lx + 48u],
            );
            acc0 += a_tile[ly * STEP + kk] * b;
            acc1 += a_tile[(ly + 16u) * STEP + kk] * b;
            acc2 += a_tile[(ly + 32u) * STEP + kk] * b;
            acc3 += a_tile[(ly + 48u) * STEP + kk] * b;
        }
        workgroupBarrier();
    }
    store_row(row0 + ly, col0, lx, acc0);
    store_row(row0 + ly + 16u, col0, lx, acc1);
    store_row(row0 + ly + 32u, col0, lx, acc2);
    store_row(row0 + ly + 48u, col0, lx, acc3);
}
