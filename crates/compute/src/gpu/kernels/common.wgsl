// Shared by every kernel (prepended by the host): the bind group layout all pipelines use,
// and the flat index of an element-wise invocation.
//
// Binding 0 and 1 are the inputs (a unary kernel gets its input bound twice), 2 the output,
// 3 the kernel's parameters (each kernel declares its own `Params`, at most 16 u32).

@group(0) @binding(0) var<storage, read> input_a: array<f32>;
@group(0) @binding(1) var<storage, read> input_b: array<f32>;
@group(0) @binding(2) var<storage, read_write> output: array<f32>;
@group(0) @binding(3) var<uniform> params: Params;

// Element-wise kernels run 256 invocations per workgroup on a 2-D grid of workgroups (one
// dimension is capped at 65 535 workgroups), and this turns an invocation into its element.
const GROUP: u32 = 256u;

fn flat_index(id: vec3<u32>, groups: vec3<u32>) -> u32 {
    return id.x + id.y * groups.x * GROUP;
}

// Output value `i` of planes of height×width, as (x, y, plane).
fn pixel_of(i: u32, width: u32, height: u32) -> vec3<u32> {
    return vec3<u32>(i % width, (i / width) % height, i / (width * height));
}

// -inf, the identity of max (WGSL has no infinite constants, so it is built at run time).
fn neg_infinity() -> f32 {
    return bitcast<f32>(0xff800000u);
}
