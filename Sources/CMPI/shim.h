// Open MPI defines its predefined handles as casts of addresses of incomplete structs,
// which Swift cannot import. These accessors return them as plain (non-null) handles.
#ifndef AUTORATE_CMPI_SHIM_H
#define AUTORATE_CMPI_SHIM_H
#include <mpi.h>

static inline MPI_Comm _Nonnull cmpi_comm_world(void) { return MPI_COMM_WORLD; }
static inline MPI_Comm _Nonnull cmpi_comm_null(void) { return MPI_COMM_NULL; }
static inline MPI_Datatype _Nonnull cmpi_float(void) { return MPI_FLOAT; }
static inline MPI_Datatype _Nonnull cmpi_double(void) { return MPI_DOUBLE; }
static inline MPI_Datatype _Nonnull cmpi_int64(void) { return MPI_INT64_T; }
static inline MPI_Datatype _Nonnull cmpi_byte(void) { return MPI_BYTE; }
static inline MPI_Op _Nonnull cmpi_sum(void) { return MPI_SUM; }
static inline MPI_Op _Nonnull cmpi_max(void) { return MPI_MAX; }
static inline MPI_Op _Nonnull cmpi_min(void) { return MPI_MIN; }
static inline void * _Nonnull cmpi_in_place(void) { return MPI_IN_PLACE; }
static inline MPI_Errhandler _Nonnull cmpi_errors_return(void) { return MPI_ERRORS_RETURN; }
static inline int cmpi_max_error_string(void) { return MPI_MAX_ERROR_STRING; }
static inline MPI_Status * _Nullable cmpi_status_ignore(void) { return MPI_STATUS_IGNORE; }
static inline MPI_Request _Nonnull cmpi_request_null(void) { return MPI_REQUEST_NULL; }
static inline MPI_Info _Nonnull cmpi_info_null(void) { return MPI_INFO_NULL; }
#endif
