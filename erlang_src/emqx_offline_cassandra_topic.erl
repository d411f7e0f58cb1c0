%%--------------------------------------------------------------------
%% MQTT topic names and filters, as pure functions: which topics a filter
%% matches, whether two filters can match a common topic, and which
%% filters are valid. The plugin decides with these what to store, what to
%% delete on an ack and which subscriptions get a replay, so they live here
%% with their own tests rather than inside the hooks.
%%--------------------------------------------------------------------
-module(emqx_offline_cassandra_topic).

-export([match/2, matches_any/2, intersects/2, is_valid_filter/1]).

%% @doc Whether Topic (a name, no wildcards) matches Filter: `+' matches any
%% one level, a final `#' the rest including the parent (`a/#' matches `a').
%% A filter that begins with a wildcard does not match a `$' topic such as
%% `$SYS/...' (MQTT 5.0, 4.7.2).
-spec match(binary(), binary()) -> boolean().
match(<<"$", _/binary>>, <<"+", _/binary>>) -> false;
match(<<"$", _/binary>>, <<"#", _/binary>>) -> false;
match(Topic, Filter) when is_binary(Topic), is_binary(Filter) ->
    match_levels(levels(Topic), levels(Filter)).

match_levels(_, [<<"#">>]) -> true;
match_levels([_ | Topic], [<<"+">> | Filter]) -> match_levels(Topic, Filter);
match_levels([Level | Topic], [Level | Filter]) -> match_levels(Topic, Filter);
match_levels([], []) -> true;
match_levels(_, _) -> false.

%% @doc Whether Topic matches at least one of Filters.
-spec matches_any(binary(), [binary()]) -> boolean().
matches_any(Topic, Filters) ->
    lists:any(fun(Filter) -> match(Topic, Filter) end, Filters).

%% @doc Whether some topic could match both filters: a subscription can
%% only find stored messages when its filter intersects a configured one.
%% Compared level by level; `#' ends the comparison, `+' matches any one
%% level. Symmetric.
-spec intersects(binary(), binary()) -> boolean().
intersects(A, B) ->
    intersect_levels(levels(A), levels(B)).

intersect_levels([<<"#">> | _], _) -> true;
intersect_levels(_, [<<"#">> | _]) -> true;
intersect_levels([], []) -> true;
intersect_levels([], _) -> false;
intersect_levels(_, []) -> false;
intersect_levels([X | As], [Y | Bs]) when X =:= Y; X =:= <<"+">>; Y =:= <<"+">> ->
    intersect_levels(As, Bs);
intersect_levels(_, _) ->
    false.

%% @doc A filter a client could subscribe to: not empty, no NUL, `+' and
%% `#' only as whole levels, `#' only as the last level.
-spec is_valid_filter(term()) -> boolean().
is_valid_filter(Filter) when is_binary(Filter), Filter =/= <<>> ->
    binary:match(Filter, <<0>>) =:= nomatch andalso valid_levels(levels(Filter));
is_valid_filter(_) ->
    false.

valid_levels([<<"#">>]) -> true;
valid_levels([<<"#">> | _]) -> false;
valid_levels([Level | Rest]) -> valid_level(Level) andalso valid_levels(Rest);
valid_levels([]) -> true.

valid_level(<<"+">>) -> true;
valid_level(Level) -> binary:match(Level, [<<"+">>, <<"#">>]) =:= nomatch.

levels(TopicOrFilter) ->
    binary:split(TopicOrFilter, <<"/">>, [global]).
