r0 = atomic_fetch_add((u64 *)(r1 + 0), r0)
w0 = cmpxchg32_32(r1 - 8, w0, w2)
r1 = map_value(m, 3) ll
call kfunc(5, 2)
call pc-1
gotol +3
may_goto -1
r0 = *(u16 *)skb[r1 + 4]
store_release((u8 *)(r1 + 0), w2)
exit
