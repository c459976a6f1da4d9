/* A flush waiting for eviction reports: ShardedQueue::evict_oldest and
 * wait_evictions_reported. Two evictors (refused producers) and the worker take elements
 * under head_lock; an evictor counts itself in reporting[epoch] while it reports. Two
 * flushers wait in turns (epoch_busy), the first with a deadline it may hit at any wait.
 * Checked: a flusher that returns true finds every eviction whose element left the queue
 * before its call reported; an element is evicted or consumed, never both, and every
 * evicted one is reported in the end.
 * With -DLIVE the evictors evict forever (producers keep the queue non-empty) and one
 * flusher waits without deadline; the claim says its call returns.
 * -DMUTANT_NO_OLD_WAIT: no wait for the other epoch before the flip (safety).
 * -DMUTANT_NO_FLIP: no flip; waits for one epoch that evictors keep entering (liveness). */

#define NT 5            /* evictors 0, 1; worker 2; flushers 3, 4 */
#define NV 5
#define SBSZ 3
#include "tso.pml"

#define WORKER 2
#define N 3             /* elements queued at the start */
#define LOCK 0
#define EPOCH 1
#define REP(e) (2 + (e))
#define EBUSY 4

byte head;              /* next element to leave the queue; only touched under head_lock */
byte owner[N];          /* ghost: 0 queued, 1 evicted, 2 consumed */
bool reported[N];       /* ghost */
byte inflight;          /* ghost: bit e set while evictor e holds an element not reported */
byte must[2];           /* ghost: evictions in flight when flusher f's call began */
bool flushing;          /* ghost (LIVE) */
bool wants;             /* LIVE: a waiting flusher gets head_lock next (see lock) */
byte finished;

/* SpinLock: the test_and_set is a locked RMW; the unlock a plain (buffered) store, which
 * is why the queue state it guards needs no buffering of its own: the next holder's RMW
 * succeeds only once the unlock, and so every store before it, reached memory.
 * Under LIVE, weak fairness alone would let evictors take the lock forever ahead of the
 * flusher (the lock is not fair); the claim is about epochs, so a waiting flusher goes
 * first. */
#ifdef LIVE
#define may_lock(t) (t >= 3 || !wants)
#define WANTS 1
#else
#define may_lock(t) true
#define WANTS 0
#endif
inline lock(t) { atomic { own_drained(t) && mem[LOCK] == 0 && may_lock(t) -> mem[LOCK] = 1 } }
inline unlock(t) { store(t, LOCK, 0) }

proctype evictor(byte me) {
  byte id, e;
#ifdef LIVE
  do
  :: lock(me);
#else
  byte k;
  for (k : 1 .. 2) {
     lock(me);
     if
     :: head >= N -> unlock(me); goto next
     :: else
     fi;
#endif
     load(me, EPOCH, e);
     atomic { own_drained(me) -> mem[REP(e)]++ }
     d_step {
#ifndef LIVE
       id = head; head++;
       assert(owner[id] == 0); owner[id] = 1;
#endif
       inflight = inflight | (1 << me)
     }
     unlock(me);
     d_step {       /* report(victim) */
       reported[id] = 1;
       inflight = inflight & ~(1 << me);
       must[0] = must[0] & ~(1 << me);
       must[1] = must[1] & ~(1 << me)
     }
     atomic { own_drained(me) -> mem[REP(e)]-- }   /* fetch_sub, release */
     d_step { id = 0; e = 0 }
#ifdef LIVE
  od
#else
next:
     skip
  }
  finished++
#endif
}

proctype worker() {
  byte k, id;
  for (k : 1 .. 1) {
    lock(WORKER);
    if
    :: head < N ->
       d_step { id = head; head++; assert(owner[id] == 0); owner[id] = 2; id = 0 }
    :: else
    fi;
    unlock(WORKER)
  }
  finished++
}

/* Flusher 0's deadline: each of its waits may give up whenever it would block. Flusher 1
 * (and the one under LIVE) waits without deadline. */
#ifdef LIVE
#define await(cond, out) (cond)
#else
#define await(cond, out) if :: (cond) :: f == 0 -> goto out fi
#endif

proctype flusher(byte me; byte f) {
  byte old, x;
  d_step { must[f] = inflight; flushing = 1 }
#ifdef LIVE
  atomic { own_drained(me) && mem[EBUSY] == 0 -> mem[EBUSY] = 1 }
#else
  if
  :: atomic { own_drained(me) && mem[EBUSY] == 0 -> mem[EBUSY] = 1 }
  :: f == 0 -> goto gave_up
  fi;
#endif
  wants = WANTS; lock(me); wants = 0;
  load(me, EPOCH, old);
  unlock(me);
#ifndef MUTANT_NO_OLD_WAIT
  /* Evictions in the other epoch began before an earlier caller's flip; none can begin now.
   * Only a caller that gave up after its flip leaves any. */
  await(mem[REP(old ^ 1)] == 0, release);
#endif
#ifndef MUTANT_NO_FLIP
  /* From here on evictions count in old ^ 1, so the count of `old` only falls. */
  wants = WANTS; lock(me); wants = 0;
  load(me, EPOCH, x);
  store(me, EPOCH, x ^ 1);
  x = 0;
  unlock(me);
#endif
  await(mem[REP(old)] == 0, release);
  assert(must[f] == 0);
release:
  old = 0;
  store(me, EBUSY, 0);
gave_up:
  flushing = 0;
  finished++
}

#ifdef LIVE
ltl returns { [] (flushing -> <> !flushing) }
init {
  atomic { run drainer(0); run drainer(1); run drainer(3); run evictor(0); run evictor(1); run flusher(3, 0) }
}
#else
/* Once all have finished: every evicted element was reported. */
proctype watchdog() {
  byte i;
  (finished == 5);
  d_step {
    for (i : 0 .. N - 1) { assert(owner[i] != 1 || reported[i]) }
  }
}
init {
  atomic {
    run drainer(0); run drainer(1); run drainer(2); run drainer(3); run drainer(4);
    run evictor(0); run evictor(1); run worker(); run flusher(3, 0); run flusher(4, 1);
    run watchdog()
  }
}
#endif
