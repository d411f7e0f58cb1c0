%%--------------------------------------------------------------------
%% EMQX API double: emqx_guid (apps/emqx/src/emqx_guid.erl): a 16-byte
%% <<Ts:64 (µs), NPid:48, Seq:16>>, the sequence per process; to_hexstr/1
%% gives 32 upper-case hex digits.
%%--------------------------------------------------------------------
-module(emqx_guid).

-export([gen/0, to_hexstr/1, timestamp/1]).

gen() ->
    Seq = (case get(emqx_guid_seq) of undefined -> 0; S -> S end + 1) band 16#FFFF,
    put(emqx_guid_seq, Seq),
    NPid = erlang:phash2({node(), self()}, 1 bsl 32) bor (erlang:phash2(node(), 1 bsl 16) bsl 32),
    <<(erlang:system_time(microsecond)):64, NPid:48, Seq:16>>.

to_hexstr(<<_:128>> = Id) -> binary:encode_hex(Id).

timestamp(<<Ts:64, _:64>>) -> Ts.
