#ifndef AUTORATE_CTURBOJPEG_SHIM_H
#define AUTORATE_CTURBOJPEG_SHIM_H
// libjpeg-turbo's TurboJPEG API: no setjmp, errors through tjGetErrorStr2.
#include <turbojpeg.h>
#endif
