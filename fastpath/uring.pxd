# The part of liburing (and of the io_uring ABI) the forwarding loop's io_uring
# mode uses, declared nogil. liburing is linked statically (setup.py), so a
# built extension needs nothing at run time but a kernel that has io_uring.
from libc.stdint cimport int32_t, uint8_t, uint16_t, uint32_t, uint64_t

cdef extern from "<liburing.h>" nogil:
    struct io_uring_sqe:
        uint8_t opcode
        uint8_t flags
        int32_t fd
        uint64_t user_data
        uint16_t buf_group
        int rw_flags
    struct io_uring_cqe:
        uint64_t user_data
        int32_t res
        uint32_t flags
    struct io_sqring_offsets:
        pass
    struct io_cqring_offsets:
        pass
    struct io_uring_params:
        uint32_t sq_entries
        uint32_t cq_entries
        uint32_t flags
        uint32_t features
    struct io_uring:
        uint32_t flags
        int ring_fd
    struct io_uring_buf_ring:
        pass
    struct io_uring_buf_reg:
        uint64_t ring_addr
        uint32_t ring_entries
        uint16_t bgid
    struct io_uring_probe:
        pass
    struct __kernel_timespec:
        long long tv_sec
        long long tv_nsec

    int io_uring_queue_init_params(unsigned entries, io_uring *ring, io_uring_params *p)
    void io_uring_queue_exit(io_uring *ring)
    io_uring_sqe *io_uring_get_sqe(io_uring *ring)
    int io_uring_submit(io_uring *ring)
    unsigned io_uring_sq_ready(const io_uring *ring)
    int io_uring_enable_rings(io_uring *ring)
    int io_uring_submit_and_wait_timeout(io_uring *ring, io_uring_cqe **cqe_ptr, unsigned wait_nr,
                                         __kernel_timespec *ts, void *sigmask)
    int io_uring_submit_and_get_events(io_uring *ring)
    unsigned io_uring_peek_batch_cqe(io_uring *ring, io_uring_cqe **cqes, unsigned count)
    void io_uring_cq_advance(io_uring *ring, unsigned nr)
    void io_uring_prep_rw(int op, io_uring_sqe *sqe, int fd, const void *addr, unsigned len, uint64_t offset)
    void io_uring_prep_write(io_uring_sqe *sqe, int fd, const void *buf, unsigned nbytes, uint64_t offset)
    void io_uring_prep_poll_multishot(io_uring_sqe *sqe, int fd, unsigned poll_mask)
    void io_uring_prep_cancel64(io_uring_sqe *sqe, uint64_t user_data, int flags)
    void io_uring_sqe_set_data64(io_uring_sqe *sqe, uint64_t data)
    void io_uring_sqe_set_flags(io_uring_sqe *sqe, unsigned flags)
    int io_uring_register_files_sparse(io_uring *ring, unsigned nr)
    int io_uring_register_files_update(io_uring *ring, unsigned off, const int *files, unsigned nr_files)
    int io_uring_register_buf_ring(io_uring *ring, io_uring_buf_reg *reg, unsigned flags)
    int io_uring_unregister_buf_ring(io_uring *ring, int bgid)
    void io_uring_buf_ring_init(io_uring_buf_ring *br)
    void io_uring_buf_ring_add(io_uring_buf_ring *br, void *addr, unsigned len, unsigned short bid,
                               int mask, int buf_offset)
    void io_uring_buf_ring_advance(io_uring_buf_ring *br, int count)
    int io_uring_buf_ring_mask(uint32_t ring_entries)
    io_uring_probe *io_uring_get_probe_ring(io_uring *ring)
    int io_uring_opcode_supported(const io_uring_probe *p, int op)
    void io_uring_free_probe(io_uring_probe *probe)

    enum:
        IORING_SETUP_CQSIZE
        IORING_SETUP_R_DISABLED
        IORING_SETUP_SUBMIT_ALL
        IORING_SETUP_SINGLE_ISSUER
        IORING_SETUP_DEFER_TASKRUN
        IOSQE_FIXED_FILE
        IOSQE_BUFFER_SELECT
        IOSQE_CQE_SKIP_SUCCESS
        IORING_CQE_F_BUFFER
        IORING_CQE_F_MORE
        IORING_CQE_BUFFER_SHIFT
        IORING_FEAT_EXT_ARG

cdef enum:
    # Linux 6.7's opcode; Debian 12's liburing (2.3) predates it and has no helper.
    IORING_OP_READ_MULTISHOT = 49
    RWF_NOWAIT = 0x00000008        # <linux/fs.h>: fail with EAGAIN rather than wait
