/* A lane's publish / close / drained(): ShardedQueue::push, close, drained.
 * Two producers, each on its own lane, push NEV events; a closer closes the queue; the
 * consumer pops what is published until drained() says it may stop.
 * Checked: when drained() returns true no push that will be accepted is under way, and
 * every accepted event has been consumed when the consumer finishes.
 * -DMUTANT_NO_HEAVY_FENCE: drained() reads the busy marks without the heavy fence. */

#define NT 2            /* the producers; the closer and the consumer store nothing buffered */
#define NV 5
#define SBSZ 3
#include "tso.pml"

#define NEV 2
#define BUSY(p) (p)
#define PUB(p) (2 + (p))
#define CLOSED 4

byte accepted[2];       /* ghost: pushes that returned ok */
bool pushing[2];        /* ghost: between a load of `closed` that saw it open and busy = 0 */
byte consumed[2];       /* the consumer's own: nobody else reads it in this model */
byte eaten[2];          /* ghost: bit k set once event k of the lane was consumed */
byte finished;          /* ghost: producers done */

proctype producer(byte me) {
  byte i, c, n;
  for (i : 1 .. NEV) {
    store(me, BUSY(me), 1);
    /* the light fence: a compiler barrier, nothing at this level */
    d_step { load_body(me, CLOSED, c); pushing[me] = (c == 0) }
    if
    :: c -> store(me, BUSY(me), 0)
    :: else ->
       n++;
       store(me, PUB(me), n);   /* release: TSO keeps it after the slot write */
       d_step { store_body(me, BUSY(me), 0); pushing[me] = 0; accepted[me] = n }
    fi
  }
  finished++
}

proctype closer() {
  d_step { mem[CLOSED] = 1 }    /* a locked RMW (the CAS); its buffer holds nothing */
}

proctype consumer() {
  byte p, v, b;
  bool fenced;
  do
  :: /* pop every lane, then ask drained() */
     for (p : 0 .. 1) {
       d_step {
         v = mem[PUB(p)];
         do
         :: consumed[p] < v ->
            consumed[p]++;
            assert((eaten[p] & (1 << consumed[p])) == 0);
            eaten[p] = eaten[p] | (1 << consumed[p])
         :: else -> break
         od;
         v = 0
       }
     }
     v = mem[CLOSED];
     if
     :: v == 0 -> goto again
     :: else
     fi;
     /* Seeing `closed`, the heavy fence makes every busy mark stored before a push's load
      * of `closed` visible: such a push saw the queue open, and either its mark or its
      * published count (stored before the mark is cleared) is in memory now. */
#ifndef MUTANT_NO_HEAVY_FENCE
     if
     :: !fenced -> heavy_fence(); fenced = 1
     :: else
     fi;
#endif
     for (p : 0 .. 1) {
       b = mem[BUSY(p)];
       v = mem[PUB(p)];
       if
       :: b || v != consumed[p] -> goto again
       :: else
       fi
     }
     break;
again:
     v = 0
  od;
  assert(!pushing[0] && !pushing[1]);   /* drained() true: no accepted push under way */
  (finished == 2);
  d_step { assert(consumed[0] == accepted[0] && consumed[1] == accepted[1]) }  /* none lost */
}

init {
  atomic {
    run drainer(0); run drainer(1);
    run producer(0); run producer(1);
    run closer(); run consumer()
  }
}
