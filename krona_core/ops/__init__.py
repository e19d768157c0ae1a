"""Pure tensor math of KronA: factor shapes, the Kronecker matmul, the bypass forward, nearest
Kronecker products. Nothing here knows about modules, files, model families or hosts."""
