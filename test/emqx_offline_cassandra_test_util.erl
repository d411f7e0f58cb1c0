%% Shared by the test suites and the benchmark.
-module(emqx_offline_cassandra_test_util).

-export([wait_until/2]).

%% @doc Polls Pred (which may crash: that counts as false) every 10 ms until
%% it holds, or returns {timeout, What} after Ms, with the NIF's status and
%% counters to explain it.
wait_until(Pred, Ms) ->
    wait_(Pred, erlang:monotonic_time(millisecond) + Ms).

wait_(Pred, End) ->
    case catch Pred() of
        true ->
            ok;
        _ ->
            case erlang:monotonic_time(millisecond) > End of
                true ->
                    {timeout, #{status => catch emqx_offline_cassandra_nif:status(),
                                stats => catch emqx_offline_cassandra_nif:stats()}};
                false ->
                    timer:sleep(10),
                    wait_(Pred, End)
            end
    end.
