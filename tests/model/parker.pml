/* The worker's arm / re-check / park and the producers' notify (Worker::main, Parker).
 * Lane 0 holds one event when the worker starts (its producer registered, active = 1);
 * producers 1 and 2 register lanes 1 and 2 and push NEV events each, so that all lanes
 * together fill a batch of MAX_BATCH while, against the threshold the worker computes
 * with one lane, neither new lane alone reaches it. The linger deadline is left out, so a
 * missed wake-up leaves the worker parked for good.
 * Checked, once nothing can move: the worker did not park while a lane held the armed
 * threshold (lost wake-up), it dispatched the full batch, and every event is in the batch
 * or still queued, once.
 * -DMUTANT_NO_REGISTRATION_WAKE: registration does not wake the worker (today's code).
 * -DMUTANT_NO_HEAVY_FENCE: the worker re-checks the lanes without the heavy fence. */

#define W 0             /* thread 0 is the worker; 1 and 2 the producers of lanes 1, 2 */
#define NT 3
#define NV 8
#define SBSZ 3
#include "tso.pml"

#define MAX_BATCH 5
#define NEV 2
#define DISARMED 255
#define WAKE_AT 0
#define ACTIVE 1
#define PUB(l) (2 + (l))
#define CONS(l) (5 + (l))

bool signaled;          /* Parker::signaled_, only touched under its mutex */
bool parked;            /* ghost: the worker waits in park() */
byte armed;             /* ghost: the threshold the worker armed last */
bool dispatched;        /* ghost */
byte batch;             /* the worker's own, global for the final check */
byte cons[3];           /* the worker's own copy of what it stored in consumed */

/* Parker::disarm_and_signal: the CAS and the mutex are locked instructions. */
inline wake(me, w) {
  atomic {
    own_drained(me) ->
    if
    :: mem[WAKE_AT] == w -> mem[WAKE_AT] = DISARMED; won = 1
    :: else -> won = 0
    fi
  }
  if
  :: won -> atomic { own_drained(me) -> signaled = 1 }
  :: else
  fi
}

proctype producer(byte me) {
  byte i, w, q, c;
  bool won;
  /* registration takes a new lane: a seq_cst RMW on active, then a look at wake_at, so that
   * either the worker's re-check sees the new lane or this load sees the worker armed */
  atomic { own_drained(me) -> mem[ACTIVE]++ }
#ifndef MUTANT_NO_REGISTRATION_WAKE
  w = mem[WAKE_AT];
  if
  :: w != DISARMED -> wake(me, w)
  :: else
  fi;
#endif
  for (i : 1 .. NEV) {
    store(me, PUB(me), i);
    /* the light fence: nothing */
    load(me, WAKE_AT, w);
    if
    :: w != DISARMED ->
       load(me, PUB(me), q);
       c = mem[CONS(me)];
       if
       :: q - c >= w -> wake(me, w)
       :: else
       fi
    :: else
    fi;
    d_step { w = 0; q = 0; c = 0; won = 0 }   /* dead: fewer distinct states */
  }
}

proctype worker() {
  byte l, k, take, lanes, threshold, act;
  bool reached;
  do
  :: for (l : 0 .. 2) {
       k = mem[PUB(l)];
       assert(k >= cons[l]);
       take = k - cons[l];
       if
       :: take > MAX_BATCH - batch -> take = MAX_BATCH - batch
       :: else
       fi;
       if
       :: take > 0 ->
          d_step { cons[l] = cons[l] + take; batch = batch + take; take = 0 }
          store(W, CONS(l), cons[l])
       :: else
       fi;
       k = 0
     }
     /* one full batch is the whole scenario */
     if
     :: batch >= MAX_BATCH -> dispatched = 1; break
     :: else
     fi;
     /* each lane's share of what the batch lacks (batch is never empty here) */
     lanes = mem[ACTIVE];
     threshold = (MAX_BATCH - batch + lanes - 1) / lanes;
     atomic { own_drained(W) -> mem[WAKE_AT] = threshold; armed = threshold }  /* seq_cst */
     /* A producer's publish may still sit in its store buffer while its load of wake_at
      * saw DISARMED: the heavy fence makes every such publish visible to the re-check. */
#ifndef MUTANT_NO_HEAVY_FENCE
     heavy_fence();
#endif
     /* The last look (Worker::main): the per-lane thresholds count only events published
      * after it, so any event at all sends the worker round again, as does a new lane. */
     reached = 0;
     for (l : 0 .. 2) {
       k = mem[PUB(l)];
       if
       :: k != cons[l] -> reached = 1   /* ShardedQueue::empty(): anything since the pop */
       :: else
       fi;
       k = 0
     }
     act = mem[ACTIVE];
     if
     :: reached || act != lanes -> skip
     :: else ->
        parked = 1;
        atomic { own_drained(W) && signaled -> signaled = 0; parked = 0 }
     fi;
     d_step { reached = 0; act = 0; lanes = 0; threshold = 0 }
     store(W, WAKE_AT, DISARMED)   /* relaxed */
  od
}

/* Runs only once nothing else can move: buffers are empty, so mem is what every thread
 * sees, and the worker has finished or is parked for good. */
proctype watchdog() {
  bool lost_wakeup, stuck_full;
  byte l, total;
  timeout;
  d_step {
    for (l : 0 .. 2) {
      lost_wakeup = lost_wakeup || (parked && mem[PUB(l)] - cons[l] >= armed);
      total = total + mem[PUB(l)] - cons[l]
    }
    stuck_full = parked && batch + total >= MAX_BATCH;
    /* every event pushed is in the batch or still queued, once */
    assert(mem[PUB(0)] + mem[PUB(1)] + mem[PUB(2)] == 1 + 2 * NEV);
    assert(batch == cons[0] + cons[1] + cons[2] && batch + total == 1 + 2 * NEV)
  }
  assert(!lost_wakeup);
  assert(!stuck_full);
  assert(dispatched)
}

init {
  atomic {
    mem[WAKE_AT] = DISARMED;
    mem[ACTIVE] = 1;
    mem[PUB(0)] = 1;
    run drainer(0); run drainer(1); run drainer(2);
    run worker(); run producer(1); run producer(2);
#ifndef LIVE
    run watchdog()   /* with LIVE the LTL formula below is the check instead */
#endif
  }
}

#ifdef LIVE
/* Liveness as LTL: every run, the blocked ones included (Spin extends them by stuttering),
 * dispatches the full batch. */
ltl full_batch_dispatched { <> dispatched }
#endif
