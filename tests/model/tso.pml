/* x86-TSO store buffers for Spin, whose own interleavings are sequentially consistent.
 * The including model defines NT (threads that store to shared memory), NV (shared
 * variables, all bytes in mem[]) and SBSZ (entries per buffer) first.
 *
 * A store enters its thread's FIFO buffer; drainer(t) moves the oldest entry to memory,
 * at any time, so stores become visible late but in program order. A load looks in the
 * thread's own buffer first, newest entry first (store forwarding), else in memory: so a
 * thread's store followed by its load of another variable can pass each other, the one
 * reordering x86 does, and the one an asymmetric fence is there to prevent.
 * A full fence or locked RMW waits until the thread's own buffer is empty (the drainer
 * empties it) and then acts on memory in one step. The heavy side of an asymmetric fence
 * (membarrier PRIVATE_EXPEDITED) empties every thread's buffer in one step: each CPU
 * running a thread of the process takes an IPI and a full barrier before the call returns.
 * The light side is a compiler barrier and appears nowhere: TSO keeps program order. */

byte mem[NV];
byte sb_a[NT * SBSZ];   /* address of each buffered store, oldest first */
byte sb_v[NT * SBSZ];   /* its value */
byte sb_n[NT];          /* entries in use */
byte sb_i;              /* scratch for d_steps only; always 0 between steps */
byte sb_t;

/* Oldest store of thread t to memory. Bodies are wrapped by their callers' d_steps. */
inline drain_body(t) {
  mem[sb_a[t * SBSZ]] = sb_v[t * SBSZ];
  sb_i = 0;
  do
  :: sb_i + 1 < sb_n[t] ->
     sb_a[t * SBSZ + sb_i] = sb_a[t * SBSZ + sb_i + 1];
     sb_v[t * SBSZ + sb_i] = sb_v[t * SBSZ + sb_i + 1];
     sb_i++
  :: else -> break
  od;
  sb_n[t]--;
  sb_a[t * SBSZ + sb_n[t]] = 0;   /* cleared so equal buffers are equal states */
  sb_v[t * SBSZ + sb_n[t]] = 0;
  sb_i = 0
}

/* A full buffer stalls the store until the drainer makes room, as on hardware. */
inline store_body(t, a, v) {
  sb_n[t] < SBSZ ->
  sb_a[t * SBSZ + sb_n[t]] = a;
  sb_v[t * SBSZ + sb_n[t]] = v;
  sb_n[t]++
}

inline load_body(t, a, r) {
  r = mem[a];
  sb_i = sb_n[t];
  do
  :: sb_i == 0 -> break
  :: else ->
     sb_i--;
     if
     :: sb_a[t * SBSZ + sb_i] == a -> r = sb_v[t * SBSZ + sb_i]; break
     :: else -> skip
     fi
  od;
  sb_i = 0
}

inline store(t, a, v) { d_step { store_body(t, a, v) } }
inline load(t, a, r) { d_step { load_body(t, a, r) } }

/* The guard of a locked RMW or full fence: use as `atomic { own_drained(t) -> ...on mem... }`. */
#define own_drained(t) (sb_n[t] == 0)

inline heavy_fence() {
  d_step {
    sb_t = 0;
    do
    :: sb_t < NT ->
       do
       :: sb_n[sb_t] > 0 -> drain_body(sb_t)
       :: else -> break
       od;
       sb_t++
    :: else -> break
    od;
    sb_t = 0
  }
}

proctype drainer(byte t) {
end:
  do
  :: d_step { sb_n[t] > 0 -> drain_body(t) }
  od
}
