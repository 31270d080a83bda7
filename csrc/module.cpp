// vkernels._C: importing it runs the TORCH_LIBRARY registrations of every op in this library. The module itself
// carries only build facts, so Python can tell what was compiled without calling a kernel.
#include <Python.h>

#ifndef VKERNELS_CPU_ISA
#define VKERNELS_CPU_ISA "default"
#endif

static struct PyModuleDef vkernels_module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};

PyMODINIT_FUNC PyInit__C(void) {
  PyObject* m = PyModule_Create(&vkernels_module);
  if (m == nullptr) return nullptr;
#ifdef VKERNELS_WITH_CUDA
  PyModule_AddIntConstant(m, "with_cuda", 1);
#else
  PyModule_AddIntConstant(m, "with_cuda", 0);
#endif
  PyModule_AddStringConstant(m, "cpu_isa", VKERNELS_CPU_ISA);
  return m;
}
